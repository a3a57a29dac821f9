"""`alignflow serve`: an exported policy behind an OpenAI-compatible API on 127.0.0.1.

A well-kept engine does the serving (`transformers serve`; `vllm serve` where vLLM is installed and
a GPU is present) on a private port. A thin proxy of ours sits in front of it. The proxy accepts
only the served model's name, answers bad requests with OpenAI-format errors instead of dropping
them, and can log every exchange for the feedback loop.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROLES = {"system", "user", "assistant", "tool", "developer"}
SERVED_DIR = "served"  # under the feedback store: one JSONL line per served exchange


def engine_command(folder: Path, port: int, engine: str) -> list[str]:
    """The engine's own command line, bound to 127.0.0.1:`port`."""
    if engine == "vllm":
        return ["vllm", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    binary = Path(sys.executable).parent / "transformers"
    return [str(binary), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]


def pick_engine(requested: str) -> str:
    """`auto`: vLLM when it is installed and a GPU is visible, else `transformers serve`."""
    if requested != "auto":
        return requested
    import torch

    return "vllm" if shutil.which("vllm") and torch.cuda.is_available() else "transformers"


def _error(status: int, message: str, code: str | None = None):
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


@dataclass(frozen=True)
class RequestProblem:
    """Why a chat-completion request is refused, as the OpenAI API reports it."""

    message: str
    status: int = 400
    code: str | None = None


def check_chat_request(body: Any, model: str) -> RequestProblem | None:
    """What is wrong with a chat-completion request, or None."""
    if not isinstance(body, dict):
        return RequestProblem("the request body must be a JSON object")
    if body.get("model") != model:
        return RequestProblem(
            f"model {body.get('model')!r} is not served here; the model is {model!r}",
            status=404,
            code="model_not_found",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return RequestProblem("messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return RequestProblem(f"messages[{index}].role must be one of {sorted(ROLES)}")
        if not isinstance(message.get("content"), str | list):
            return RequestProblem(f"messages[{index}].content must be a string or a list of parts")
    return None


class ExchangeLog:
    """Served exchanges appended to `<store>/served/<date>.jsonl`, one line each."""

    def __init__(self, store: Path) -> None:
        self.folder = store / SERVED_DIR
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        now = datetime.now(UTC)
        line = json.dumps({"timestamp": now.isoformat(), **record}, ensure_ascii=False)
        with (self.folder / f"{now:%Y%m%d}.jsonl").open("a", encoding="utf-8") as out:
            out.write(line + "\n")


async def _json_body(request) -> tuple[Any, Any]:
    """(the request's JSON body, None), or (None, the 400 answer) when it is not valid JSON."""
    try:
        return json.loads(await request.body()), None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, _error(400, "the request body is not valid JSON")


def create_app(upstream: str, model: str, upstream_model: str, log: ExchangeLog | None):
    """The proxy: /health, /v1/models, /v1/chat/completions (streamed or not), /v1/feedback."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(600.0))

    async def health(_: Request) -> Response:
        response = await client.get("/health")
        return Response(response.content, status_code=response.status_code)

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "alignflow"}]}
        )

    async def chat(request: Request) -> Response:
        body, invalid = await _json_body(request)
        if invalid:
            return invalid
        problem = check_chat_request(body, model)
        if problem:
            return _error(problem.status, problem.message, problem.code)
        forwarded = {**body, "model": upstream_model}
        if body.get("stream"):
            return StreamingResponse(
                _stream(client, forwarded, body, log), media_type="text/event-stream"
            )
        response = await client.post("/v1/chat/completions", json=forwarded)
        if response.status_code != 200:
            return _error(response.status_code, response.text[:500])
        answer = response.json()
        answer["model"] = model
        if log:
            text = answer["choices"][0]["message"].get("content") or ""
            log.write({"id": answer.get("id"), "messages": body["messages"], "response": text})
        return JSONResponse(answer)

    async def feedback(request: Request) -> Response:
        body, invalid = await _json_body(request)
        if invalid:
            return invalid
        if (
            not isinstance(body, dict)
            or body.get("rating") not in ("up", "down")
            or not body.get("id")
        ):
            return _error(400, 'feedback needs {"id": COMPLETION_ID, "rating": "up" | "down"}')
        if log:
            log.write({"id": body["id"], "rating": body["rating"]})
        return JSONResponse({"ok": True, "logged": log is not None})

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _stream(client, forwarded: dict, body: dict, log: ExchangeLog | None):
    """Pass the engine's server-sent events through, collecting the text for the log."""
    pieces: list[str] = []
    completion_id = None
    async with client.stream("POST", "/v1/chat/completions", json=forwarded) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                try:
                    chunk = json.loads(line.removeprefix("data: "))
                except json.JSONDecodeError:
                    chunk = {}
                completion_id = chunk.get("id", completion_id)
                for choice in chunk.get("choices", []):
                    pieces.append((choice.get("delta") or {}).get("content") or "")
            yield (line + "\n").encode()
    if log:
        log.write({"id": completion_id, "messages": body["messages"], "response": "".join(pieces)})


def _die_with_parent() -> None:
    """Linux: the engine is sent SIGTERM when the process that started it dies, however it dies
    (even by SIGKILL), so a served model never outlives `alignflow serve`."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_engine(folder: Path, port: int, engine: str, log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as out:
        return subprocess.Popen(
            engine_command(folder, port, engine),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def exit_on_sigterm() -> None:
    """SIGTERM (a supervisor, `kill`, a container stop) ends `alignflow serve` through its
    `finally`, which stops the engine. uvicorn shuts down gracefully on SIGTERM and then raises the
    signal again, which by default killed the process before that `finally` ran."""
    import signal

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, limit_s: float = 300) -> None:
    """Until the engine answers /health; a RuntimeError with its log's tail if it exits or hangs."""
    import time

    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the engine exited ({process.returncode}):\n{log_path.read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"the engine was not ready in {limit_s:.0f} s:\n{log_path.read_text()[-2000:]}"
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def served_files(store: Path) -> list[Path]:
    return sorted((Path(store) / SERVED_DIR).glob("*.jsonl"))


def served_fingerprint(store: Path) -> str:
    """Changes whenever an exchange or a rating is logged (for the collect stage's cache key)."""
    import hashlib

    listing = [(path.name, path.stat().st_size) for path in served_files(store)]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def read_served(store: Path) -> list[dict]:
    """Served exchanges as prompt rows: the messages sent, the response, and the rating a client
    gave it later (None when none)."""
    exchanges: dict[str, dict] = {}
    ratings: dict[str, str] = {}
    for path in served_files(store):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if "response" in entry:
                exchanges[str(entry.get("id"))] = entry
            elif "rating" in entry:
                ratings[str(entry["id"])] = entry["rating"]
    return [
        {"prompt": entry["messages"], "served_response": entry["response"],
         "served_id": key, "served_rating": ratings.get(key)}
        for key, entry in exchanges.items()
        if entry["response"].strip()
    ]  # fmt: skip
