"""`alignflow serve` on the session's champion, talked to with the official openai client: a chat
completion, a streamed one, bad requests answered with errors (and the server still serving), and
served exchanges logged for the feedback loop."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from alignflow.pipeline import tracking_uri
from tests.conftest import REPO
from tests.flow.conftest import alignflow_serve

MODEL = "alignflow-policy"


@pytest.fixture(scope="module")
def server(pipeline_runs, tmp_path_factory):
    """`alignflow serve models:/alignflow-policy@champion` (exported on the way) on 127.0.0.1."""
    work = tmp_path_factory.mktemp("serve")
    options = ["--tracking-uri", tracking_uri(pipeline_runs.cfg),
               "--feedback-store", str(work / "feedback")]  # fmt: skip
    with alignflow_serve(f"models:/{MODEL}@champion", work, *options) as (url, process):
        yield url, work, process
    # SIGTERM stopped the whole engine process group: nothing outlives `alignflow serve`
    deadline = time.monotonic() + 30
    while _engines() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _engines(), "an engine outlived alignflow serve"


def _engines() -> list[int]:
    """`transformers serve` processes started by this test session's servers (by their parent's
    session: the engine runs in its own process group, started from `alignflow serve`)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = status.read_bytes().split(b"\0")
        except OSError:
            continue
        engine = b"serve" in words and any(word.endswith(b"/transformers") for word in words)
        if engine and any(b"alignflow-serve-" in word for word in words):
            pids.append(int(status.parent.name))
    return pids


def _client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


PROMPT = [{"role": "user", "content": "Write a short review of the Nimbus X2 kettle."}]


def test_a_chat_completion_and_a_streamed_one(server):
    url, *_ = server
    client = _client(url)
    done = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=24)
    assert done.model == MODEL and done.choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=24, stream=True
    ))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and streamed.strip()


def test_bad_requests_get_error_responses_and_the_server_keeps_serving(server):
    import openai

    url, *_ = server
    client = _client(url)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4", messages=PROMPT, max_tokens=8)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "wizard", "content": "hi"}], max_tokens=8
        )
    broken = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    after = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=8)
    assert after.choices[0].message.content is not None


def test_served_exchanges_and_ratings_are_logged_for_feedback(server):
    url, work, _ = server
    client = _client(url)
    done = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=16)
    rated = httpx.post(f"{url}/v1/feedback", json={"id": done.id, "rating": "down"}, timeout=10)
    assert rated.json() == {"ok": True, "logged": True}
    lines = [json.loads(line) for path in sorted((work / "feedback" / "served").glob("*.jsonl"))
             for line in path.read_text().splitlines()]  # fmt: skip
    exchange = next(line for line in lines if line.get("id") == done.id and "response" in line)
    assert exchange["messages"] == PROMPT
    assert exchange["response"] == done.choices[0].message.content
    assert {"id": done.id, "rating": "down"}.items() <= lines[-1].items()


def test_the_next_collect_run_labels_what_was_served(pipeline_runs, server, tmp_path):
    """collect.served: the served prompt becomes a comparison of the served response and fresh
    samples, labelled (here by the session's reward model) and added to the feedback store; the
    user's rating of that response travels with its pairs, where KTO reads it."""
    from alignflow.algorithms.preference import unpaired_rows
    from alignflow.feedback import store
    from alignflow.pipeline import tracking_context
    from alignflow.store import StageResult, read_jsonl
    from tasks.collect import run_collect
    from tests.conftest import micro_config

    url, work, _ = server
    served = _client(url).chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=16)
    answer = served.choices[0].message.content.strip()
    httpx.post(f"{url}/v1/feedback", json={"id": served.id, "rating": "up"}, timeout=10)

    def stage(name: str) -> StageResult:
        output = Path(pipeline_runs.first["stages"][name]["output"])
        return StageResult.model_validate_json((output / "result.json").read_text())

    reward_model = stage("reward").path("model")
    cfg = micro_config(
        tmp_path, "collect.served=true", f"collect.feedback_store={work / 'feedback'}",
        "collect.max_prompts=2", "collect.samples_per_prompt=2",
        f"collect.labelers=[{{kind: reward_model, models: ['{reward_model}'], name: rm}}]",
    )  # fmt: skip
    result = run_collect(cfg, tracking_context(cfg, tags={}), stage("prepare"), stage("sft"))
    assert result.metrics["served_exchanges"] >= 1
    comparisons = read_jsonl(result.path("comparisons.jsonl"))
    (mine,) = [c for c in comparisons if c["meta"].get("served_id") == served.id]
    assert mine["prompt"] == PROMPT and mine["candidates"][0] == answer
    records, _ = store.read(work / "feedback")
    assert [r for r in records if r.comparison_id == mine["id"] and r.labeler == "rm"]
    # the rating labels the served response for KTO, whatever the reward model made of it
    pairs = [p for p in read_jsonl(result.path("pairs.jsonl")) if p["comparison_id"] == mine["id"]]
    assert pairs and {p["served_rating"] for p in pairs} == {"up"}
    rated = [row for row in unpaired_rows(pairs) if row["rated"]]
    assert [(row["completion"][0]["content"], row["label"]) for row in rated] == [(answer, True)]


def _rss_kb(pid: int) -> int:
    """Resident memory of `pid` and its children (the engine), in KiB, from /proc."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if int(status.parent.name) == pid or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def _post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120, **kwargs)


def test_oversized_bodies_are_refused_without_being_held(server):
    url, _, process = server
    before = _rss_kb(process.pid)
    huge = b'{"model": "alignflow-policy", "messages": [{"role": "user", "content": "' + (
        b"x" * (60 << 20)
    ) + b'"}]}'  # fmt: skip
    for size, body in (("60 MB", huge), ("5 MB", huge[: 5 << 20] + b'"}]}')):
        answer = httpx.post(f"{url}/v1/chat/completions", content=body, timeout=120)
        assert answer.status_code == 413, size
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert _rss_kb(process.pid) - before < 150_000  # KiB: the bodies were never held whole
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


HTTP_CASES = [
    case
    for case in yaml.safe_load((REPO / "tests" / "bad_input" / "corpus.yaml").read_text())
    if case.get("kind") == "http"
]


def _http_body(case: dict) -> bytes | None:
    """The raw request body a corpus case sends (None: no body)."""
    good = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def asking(content: str, times: int = 1) -> bytes:
        return json.dumps(
            {**good, "messages": [{"role": "user", "content": content}] * times}
        ).encode()

    generated = {
        "deep_json_body": lambda: b"[" * 200_000 + b"]" * 200_000,
        "body_60mb": lambda: asking("x" * (60 << 20)),
        "body_5mb": lambda: asking("x" * (5 << 20)),
        "many_messages": lambda: asking("hi", times=10_000),
        "long_prompt": lambda: asking("word " * 20_000),
    }
    if "generate" in case:
        return generated[case["generate"]]()
    if "body_hex" in case:
        return bytes.fromhex(case["body_hex"])
    if "body" in case:
        return case["body"].encode()
    if case.get("method", "POST") != "POST":
        return None
    request = {**good, **case.get("change", {})}
    for key in case.get("drop", []):
        request.pop(key)
    return json.dumps(request).encode()


def _logged(work: Path) -> list[str]:
    return [path.read_text() for path in sorted((work / "feedback").rglob("*.jsonl"))]


@pytest.mark.parametrize("case", HTTP_CASES, ids=[case["id"] for case in HTTP_CASES])
def test_bad_http_request_is_answered_in_one_line(server, case):
    """The HTTP part of the bad-input corpus (tests/bad_input/corpus.yaml)."""
    url, work, _ = server
    before = _logged(work)
    path = case.get("path", "/v1/chat/completions")
    answer = httpx.request(case.get("method", "POST"), f"{url}{path}", content=_http_body(case),
                           headers={"content-type": "application/json"}, timeout=120)  # fmt: skip
    assert answer.status_code == case["status"], answer.text[:300]
    error = answer.json()["error"]
    message = error["message"]
    assert "\n" not in message and "Traceback" not in message and len(message) <= 300, message
    assert re.search(case["error"], message), message
    assert error["type"] == "invalid_request_error"
    if "param" in case:
        assert error["param"] == case["param"]
    if "code" in case:
        assert error["code"] == case["code"]
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert _logged(work) == before, "a refused request was logged for feedback"


def test_streamed_chunks_carry_the_served_model_name_and_unknown_feedback_is_404(server):
    url, *_ = server
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                      json={"model": MODEL, "messages": PROMPT, "max_tokens": 6,
                            "stream": True}) as answer:  # fmt: skip
        chunks = [json.loads(line[6:]) for line in answer.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    assert chunks and {chunk["model"] for chunk in chunks} == {MODEL}
    unknown = httpx.post(f"{url}/v1/feedback", json={"id": "nope", "rating": "up"}, timeout=10)
    assert unknown.status_code == 404


def test_fifty_concurrent_clients_get_answers(server):
    from concurrent.futures import ThreadPoolExecutor

    url, *_ = server
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 4}
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: _post(url, body), range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    assert all(a.json()["choices"][0]["message"]["content"] is not None for a in answers)


def test_a_dead_engine_is_reported_and_restarted(server):
    """Last in this module: it kills the engine the server fixture started."""
    import signal

    url, *_ = server
    (engine,) = _engines()
    os.kill(engine, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "the proxy still says healthy"
        time.sleep(0.2)
    down = _post(url, {"model": MODEL, "messages": PROMPT, "max_tokens": 4})
    assert down.status_code == 503 and down.json()["error"]["code"] == "engine_unavailable"
    deadline = time.monotonic() + 240
    while httpx.get(f"{url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(1)
    back = _post(url, {"model": MODEL, "messages": PROMPT, "max_tokens": 4})
    assert back.status_code == 200 and _engines() != [engine]
