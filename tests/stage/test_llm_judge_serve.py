"""The llm_judge against a real OpenAI-compatible server: `transformers serve` with the pipeline's
tiny SFT model, reached through the official openai client. A small HTTP proxy in front of it
counts the requests, can answer 503 first (to see the client retry), and can replace the tiny
model's answer with a verdict (to see records come out)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alignflow.config import LLMJudgeConfig
from alignflow.feedback.llm_judge import LLMJudge
from alignflow.feedback.records import Comparison

CANDIDATES = ["The lamp is bright and sturdy.", "Bad.", "It works, mostly."]
COMPARISONS = [
    Comparison.of([{"role": "user", "content": f"Review the Nimbus X{n}."}], CANDIDATES)
    for n in range(2)
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(
        f"transformers serve not ready in {limit_s} s:\n{log_path.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def served_model(pipeline_runs, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base URL without /v1, model path) of a running `transformers serve`."""
    model_dir = pipeline_runs.first["stages"]["sft"]["output"] + "/model"
    work = tmp_path_factory.mktemp("serve")
    (work / "hf_cache").mkdir()
    port = _free_port()
    env = {**os.environ, "HF_HUB_CACHE": str(work / "hf_cache"), "HF_HUB_OFFLINE": "1"}
    command = [str(Path(sys.executable).parent / "transformers"), "serve", model_dir]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    log_path = work / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        yield url, model_dir
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Proxy(ThreadingHTTPServer):
    upstream: str
    fail_first: int
    answer: Callable[[str], str] | None
    seen: list[dict]  # per request: the JSON body and the client's retry count


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _Proxy

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        retry = int(self.headers.get("x-stainless-retry-count", "0"))
        self.server.seen.append({"body": request, "retry": retry})
        if self.server.fail_first > 0:
            self.server.fail_first -= 1
            error = json.dumps({"error": {"message": "busy, try again"}}).encode()
            return self._reply(503, error, {"retry-after-ms": "50"})
        upstream = urllib.request.Request(
            self.server.upstream + self.path,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(upstream, timeout=60) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        if self.server.answer is not None and status == 200:
            completion = json.loads(payload)
            content = request["messages"][0]["content"]
            completion["choices"][0]["message"]["content"] = self.server.answer(content)
            payload = json.dumps(completion).encode()
        self._reply(status, payload)


@contextmanager
def proxy(upstream: str, fail_first: int = 0, answer: Callable[[str], str] | None = None):
    server = _Proxy(("127.0.0.1", 0), _ProxyHandler)
    server.upstream, server.fail_first, server.answer, server.seen = (
        upstream,
        fail_first,
        answer,
        [],
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _judge(base_url: str, model: str, **overrides) -> LLMJudge:
    cfg = LLMJudgeConfig(
        base_url=base_url, model=model, api_key_env=None, timeout_s=30, **overrides
    )
    return LLMJudge(cfg)


def _shown(content: str) -> tuple[int, int]:
    """(candidate shown as A, candidate shown as B) in a default-template request."""
    a = next(i for i, c in enumerate(CANDIDATES) if f"Response A:\n{c}\n" in content)
    b = next(i for i, c in enumerate(CANDIDATES) if f"Response B:\n{c}\n" in content)
    return a, b


def _answer_checks(counters: dict[str, int]) -> None:
    answers = ("failures", "unparsable", "first_position_wins", "second_position_wins", "ties")
    assert counters["calls"] == sum(counters[name] for name in answers)


def test_every_pair_is_asked_in_both_orders_and_unparsable_answers_are_counted(served_model):
    url, model = served_model
    with proxy(url) as server:
        records, counters = _judge(f"http://127.0.0.1:{server.server_port}/v1", model).label(
            COMPARISONS, progress=False
        )

    # 2 comparisons x 3 pairs x 2 orders, each one request (no retries needed)
    assert len(server.seen) == counters["calls"] == 12
    assert all(
        seen["body"]["model"] == model and seen["body"]["max_tokens"] == 8 for seen in server.seen
    )
    for n in range(2):
        contents = [s["body"]["messages"][0]["content"] for s in server.seen]
        shown = [_shown(c) for c in contents if f"Review the Nimbus X{n}." in c]
        assert sorted(shown) == [(a, b) for a in range(3) for b in range(3) if a != b]
    # A tiny lamp-review model does not answer A/B: counted, not fatal.
    assert counters["failures"] == 0
    assert counters["unparsable"] >= counters["calls"] // 2
    assert counters["pairs"] == 6
    assert counters["records"] == len(records)
    assert counters["records"] + counters["comparisons_without_record"] == 2
    _answer_checks(counters)


def test_a_503_is_retried_by_the_client(served_model):
    url, model = served_model
    with proxy(url, fail_first=1) as server:
        judge = _judge(f"http://127.0.0.1:{server.server_port}/v1", model, max_retries=2)
        _, counters = judge.label(COMPARISONS[:1], progress=False)

    assert counters["calls"] == 6 and counters["failures"] == 0
    assert len(server.seen) == 7  # the first call was sent twice
    assert [seen["retry"] for seen in server.seen[:2]] == [0, 1]
    assert server.seen[0]["body"] == server.seen[1]["body"]


def test_an_unreachable_server_fails_each_call_without_stopping_the_batch(caplog, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-never-logged")
    cfg = LLMJudgeConfig(
        base_url=f"http://127.0.0.1:{_free_port()}/v1",
        model="any",
        api_key_env="JUDGE_TEST_KEY",
        max_retries=0,
        timeout_s=5,
    )
    with caplog.at_level(logging.WARNING, logger="alignflow.feedback.llm_judge"):
        records, counters = LLMJudge(cfg).label(COMPARISONS, progress=False)

    assert records == []
    assert counters["calls"] == counters["failures"] == 12
    assert counters["comparisons_without_record"] == 2
    failures = [r.getMessage() for r in caplog.records if "call failed" in r.getMessage()]
    assert len(failures) == 12
    assert all("APIConnectionError" in line for line in failures)
    assert all(any(c.id in line for line in failures) for c in COMPARISONS)
    assert "sk-secret-never-logged" not in caplog.text


def test_a_custom_prompt_template_is_what_the_server_receives(served_model):
    url, model = served_model
    template = 'Chat:\n{prompt}\n(1) {response_a}\n(2) {response_b}\nReply as {"winner": "A|B"}.'
    with proxy(url) as server:
        judge = _judge(f"http://127.0.0.1:{server.server_port}/v1", model, prompt_template=template)
        _, counters = judge.label(COMPARISONS[:1], progress=False)

    first = server.seen[0]["body"]["messages"]
    assert first == [
        {
            "role": "user",
            "content": f"Chat:\nUser: Review the Nimbus X0.\n(1) {CANDIDATES[0]}\n(2) "
            f'{CANDIDATES[1]}\nReply as {{"winner": "A|B"}}.',
        }
    ]
    assert counters["calls"] == len(server.seen) == 6


def _prefers_longer(content: str) -> str:
    """A consistent judge: the longer response wins, wherever it is shown."""
    a, b = _shown(content)
    return "**A**" if len(CANDIDATES[a]) > len(CANDIDATES[b]) else "Answer: Response B"


def test_consistent_verdicts_become_one_copeland_ranked_record(served_model):
    url, model = served_model
    with proxy(url, answer=_prefers_longer) as server:
        records, counters = _judge(f"http://127.0.0.1:{server.server_port}/v1", model).label(
            COMPARISONS[:1], progress=False
        )

    assert len(records) == 1
    record = records[0]
    # lengths: candidate 0 > 2 > 1, so Copeland scores 2, -2, 0
    assert record.scores == [2.0, -2.0, 0.0]
    assert record.ranking == [1, 3, 2]
    assert record.labeler == f"llm_judge:{model}"
    assert record.comparison_id == COMPARISONS[0].id
    assert record.comment.startswith("pairs judged 3/3")
    assert counters["inconsistent"] == 0 and counters["unparsable"] == 0
    assert counters["first_position_wins"] == counters["second_position_wins"] == 3
    _answer_checks(counters)
