"""`alignflow serve` on the session's champion, talked to with the official openai client: a chat
completion, a streamed one, bad requests answered with errors (and the server still serving), and
served exchanges logged for the feedback loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from alignflow.launch import free_port
from alignflow.pipeline import tracking_uri
from tests.conftest import REPO

MODEL = "alignflow-policy"


@pytest.fixture(scope="module")
def server(pipeline_runs, tmp_path_factory):
    """`alignflow serve models:/alignflow-policy@champion` (exported on the way) on 127.0.0.1."""
    work = tmp_path_factory.mktemp("serve")
    port = free_port()
    command = [sys.executable, "-m", "alignflow.cli", "serve", f"models:/{MODEL}@champion",
               "--port", str(port), "--engine", "transformers",
               "--tracking-uri", tracking_uri(pipeline_runs.cfg),
               "--feedback-store", str(work / "feedback")]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(work / "hf_cache"))
    log = (work / "serve.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, (work / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield url, work
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


PROMPT = [{"role": "user", "content": "Write a short review of the Nimbus X2 kettle."}]


def test_a_chat_completion_and_a_streamed_one(server):
    url, _ = server
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

    url, _ = server
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
    url, work = server
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

    url, work = server
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
