"""`alignflow serve`: an exported policy behind an OpenAI-compatible API on 127.0.0.1.

A well-kept engine does the serving (`transformers serve`; `vllm serve` where vLLM is installed and
a GPU is present) on a private port. A thin proxy of ours sits in front of it. The proxy accepts
only the served model's name, answers bad requests with OpenAI-format errors instead of dropping
them, and can log every exchange for the feedback loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alignflow.config import bounded_line

log = logging.getLogger(__name__)

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


def _error(status: int, message: str, code: str | None = None, param: str | None = None):
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


@dataclass(frozen=True)
class RequestProblem:
    """Why a chat-completion request is refused, as the OpenAI API reports it."""

    message: str
    status: int = 400
    code: str | None = None
    param: str | None = None


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server. `context`: the model's positions (prompt tokens +
    max_tokens must fit); None when the model does not say."""

    max_body_bytes: int = 1 << 20
    max_messages: int = 512
    max_tokens: int = 4096
    context: int | None = None


def _number(body: dict, name: str, low: float, high: float, integer: bool = False):
    """A RequestProblem when `body[name]` is present and not a number in [low, high]."""
    if name not in body or body[name] is None:
        return None
    value = body[name]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        return RequestProblem(
            f"{name} must be {what} from {low:g} to {high:g}, got {str(value)[:40]!r}", param=name
        )
    return None


def check_chat_request(body: Any, model: str, limits: Limits = Limits()) -> RequestProblem | None:
    """What is wrong with a chat-completion request, or None: checked before the engine sees it."""
    if not isinstance(body, dict):
        return RequestProblem("the request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        return RequestProblem(
            f"model must be a string: the served model is {model!r}", param="model"
        )
    if body["model"] != model:
        return RequestProblem(
            f"model {str(body.get('model'))[:80]!r} is not served here; the model is {model!r}",
            status=404,
            code="model_not_found",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return RequestProblem("messages must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        return RequestProblem(
            f"{len(messages)} messages; at most {limits.max_messages}", param="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return RequestProblem(
                f"messages[{index}].role must be one of {sorted(ROLES)}", param="messages"
            )
        content = message.get("content")
        if not isinstance(content, str | list):
            return RequestProblem(
                f"messages[{index}].content must be a string or a list of text parts",
                param="messages",
            )
        for part_index, part in enumerate(content if isinstance(content, list) else []):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                return RequestProblem(
                    f'messages[{index}].content[{part_index}] must be {{"type": "text", "text": '
                    f"STRING}}: the served model reads text only",
                    param="messages",
                )
    ceiling = (
        limits.max_tokens if limits.context is None else min(limits.max_tokens, limits.context)
    )
    for problem in (
        _number(body, "max_tokens", 1, ceiling, integer=True),
        _number(body, "max_completion_tokens", 1, ceiling, integer=True),
        _number(body, "temperature", 0, 2),
        _number(body, "top_p", 0, 1),
        _number(body, "presence_penalty", -2, 2),
        _number(body, "frequency_penalty", -2, 2),
        _number(body, "n", 1, 1, integer=True),  # one choice per request
        _number(body, "seed", -(2**63), 2**63 - 1, integer=True),
    ):
        if problem:
            return problem
    if "stream" in body and not isinstance(body["stream"], bool):
        return RequestProblem("stream must be true or false", param="stream")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        return RequestProblem("stop must be a string or a list of up to 4 strings", param="stop")
    return None


def prompt_problem(tokenizer, body: dict, limits: Limits) -> RequestProblem | None:
    """The prompt as the chat template renders it must leave room for max_tokens in the model's
    context (OpenAI's `context_length_exceeded`)."""
    if tokenizer is None or limits.context is None:
        return None
    try:
        ids = tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, tokenize=True
        )
    except Exception as error:  # a template that rejects these messages: the client's to fix
        return RequestProblem(f"the chat template cannot render these messages: {error}"[:300])
    count = len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding in 5.x
    wanted = body.get("max_completion_tokens") or body.get("max_tokens") or 1
    if count + wanted > limits.context:
        return RequestProblem(
            f"this model's context is {limits.context} tokens; the messages take {count} and "
            f"max_tokens asks for {wanted} more",
            code="context_length_exceeded",
            param="messages",
        )
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


def _one_line(text: str) -> str:
    """An engine's error text as one bounded line (its tracebacks and newlines folded)."""
    return bounded_line(" ".join(text.split()))


class _TooLarge(Exception):
    pass


async def _limited_body(request, limit: int) -> bytes:
    """The body, read only up to `limit` bytes: a bigger one is refused before it is held."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request, limit: int = Limits.max_body_bytes) -> tuple[Any, Any]:
    """(the request's JSON body, None), or (None, the 4xx answer) when it is too large or not
    valid JSON."""
    try:
        raw = await _limited_body(request, limit)
    except _TooLarge:
        return None, _error(413, f"the request body is larger than {limit} bytes")
    try:
        return json.loads(raw), None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None, _error(400, "the request body is not valid JSON")


ENGINE_DOWN = "the model engine is not running; it is being restarted, try again shortly"


def create_app(
    upstream: str,
    model: str,
    upstream_model: str,
    log: ExchangeLog | None,
    limits: Limits = Limits(),
    tokenizer=None,
    engine: Engine | None = None,
):
    """The proxy: /health, /v1/models, /v1/chat/completions (streamed or not), /v1/feedback.
    Requests are checked (size, parameters, context) before the engine sees them; an engine that
    died is restarted and reported unhealthy meanwhile; a client that leaves cancels its request."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(600.0, connect=5.0))
    served_ids: set[str] = set()
    down = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)

    def engine_down() -> Response | None:
        if engine is not None and not engine.alive():
            engine.restart_soon()
            return _error(503, ENGINE_DOWN, "engine_unavailable")
        return None

    async def health(_: Request) -> Response:
        if answer := engine_down():
            return answer
        try:
            response = await client.get("/health", timeout=5)
        except down:
            return _error(503, ENGINE_DOWN, "engine_unavailable")
        return Response(response.content, status_code=response.status_code)

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "alignflow"}]}
        )

    async def chat(request: Request) -> Response:
        body, invalid = await _json_body(request, limits.max_body_bytes)
        if invalid:
            return invalid
        problem = check_chat_request(body, model, limits) or prompt_problem(tokenizer, body, limits)
        if problem:
            return _error(problem.status, problem.message, problem.code, problem.param)
        if answer := engine_down():
            return answer
        forwarded = {**body, "model": upstream_model}
        send = _streamed if body.get("stream") else _answered
        for attempt in (1, 2):
            try:
                return await send(request, forwarded, body)
            except down:  # a pooled connection to an engine since restarted: once more, afresh
                if attempt == 2 or engine_down():
                    return engine_down() or _error(503, ENGINE_DOWN, "engine_unavailable")
        raise AssertionError("unreachable")

    async def _answered(request: Request, forwarded: dict, body: dict) -> Response:
        call = asyncio.ensure_future(client.post("/v1/chat/completions", json=forwarded))
        while not call.done():  # a client that leaves cancels its generation upstream
            await asyncio.wait({call}, timeout=0.5)
            if not call.done() and await request.is_disconnected():
                call.cancel()
                return Response(status_code=499)
        response = call.result()
        if response.status_code != 200:
            return _error(response.status_code, _one_line(response.text))
        answer = response.json()
        answer["model"] = model
        served_ids.add(str(answer.get("id")))
        if log:
            text = answer["choices"][0]["message"].get("content") or ""
            log.write({"id": answer.get("id"), "messages": body["messages"], "response": text})
        return JSONResponse(answer)

    async def _streamed(request: Request, forwarded: dict, body: dict) -> Response:
        upstream_request = client.build_request("POST", "/v1/chat/completions", json=forwarded)
        response = await client.send(upstream_request, stream=True)
        if response.status_code != 200:  # before any byte is sent: a plain error answer
            text = (await response.aread()).decode(errors="replace")
            await response.aclose()
            return _error(response.status_code, _one_line(text))
        events = _stream(response, body, model, log, served_ids)
        return StreamingResponse(events, media_type="text/event-stream")

    async def feedback(request: Request) -> Response:
        body, invalid = await _json_body(request, limits.max_body_bytes)
        if invalid:
            return invalid
        if (
            not isinstance(body, dict)
            or body.get("rating") not in ("up", "down")
            or not isinstance(body.get("id"), str)
        ):
            return _error(400, 'feedback needs {"id": COMPLETION_ID, "rating": "up" | "down"}')
        if body["id"] not in served_ids:
            return _error(404, f"no completion {body['id'][:80]!r} was served here", "not_found")
        if log:
            log.write({"id": body["id"], "rating": body["rating"]})
        return JSONResponse({"ok": True, "logged": log is not None})

    async def no_route(request: Request, problem) -> Response:
        if problem.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(404, f"no endpoint {request.url.path[:80]!r} here", "not_found")

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: no_route, 405: no_route})


async def _stream(response, body: dict, model: str, log: ExchangeLog | None, served_ids: set):
    """Pass the engine's server-sent events through under the served model's name, collecting
    the text for the log. A client that leaves stops the iteration: the upstream stream closes."""
    pieces: list[str] = []
    completion_id = None
    try:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                try:
                    chunk = json.loads(line.removeprefix("data: "))
                except json.JSONDecodeError:
                    chunk = None
                if isinstance(chunk, dict):
                    completion_id = chunk.get("id", completion_id)
                    for choice in chunk.get("choices", []):
                        pieces.append((choice.get("delta") or {}).get("content") or "")
                    if "model" in chunk:
                        chunk["model"] = model  # never the engine's internal path
                        line = "data: " + json.dumps(chunk, ensure_ascii=False)
            yield (line + "\n").encode()
    finally:
        await response.aclose()
    served_ids.add(str(completion_id))
    if log:
        log.write({"id": completion_id, "messages": body["messages"], "response": "".join(pieces)})


def _die_with_parent() -> None:
    """Linux: the engine is sent SIGTERM when the process that started it dies, however it dies
    (even by SIGKILL), so a served model never outlives `alignflow serve`."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1  # SIGKILL: a graceful engine shutdown could wait on a hung request
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_engine(folder: Path, port: int, engine: str, log_path: Path) -> subprocess.Popen:
    """The engine in its own process group (stopped as a whole), killed if we die."""
    with log_path.open("a") as out:
        return subprocess.Popen(
            engine_command(folder, port, engine),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


class Engine:
    """The serving engine's process, restarted when it dies (at most `max_restarts` times).

    Restarts happen on one supervising thread that lives as long as the server: Linux sends the
    parent-death signal when the *thread* that started a child ends, so an engine started from a
    short-lived thread would be killed with it."""

    def __init__(self, folder: Path, port: int, kind: str, log_path: Path, max_restarts: int = 5):
        import threading

        self.folder, self.port, self.kind, self.log_path = folder, port, kind, log_path
        self.max_restarts, self.restarts = max_restarts, 0
        self.process = start_engine(folder, port, kind, log_path)
        self._wanted = threading.Event()
        threading.Thread(target=self._supervise, name="engine-supervisor", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def restart_soon(self) -> None:
        """Ask the supervisor for a new engine (a no-op while one is starting)."""
        self._wanted.set()

    def _supervise(self) -> None:
        while True:
            self._wanted.wait()
            if not self.alive() and self.restarts < self.max_restarts:
                self.restarts += 1
                log.warning("the engine exited (%s); restart %d of %d",
                            self.process.returncode, self.restarts, self.max_restarts)  # fmt: skip
                self.process = start_engine(self.folder, self.port, self.kind, self.log_path)
                try:
                    wait_healthy(self.url, self.process, self.log_path)
                except RuntimeError as error:
                    log.error("the engine did not come back: %s", str(error).splitlines()[0])
            self._wanted.clear()

    def stop(self) -> None:
        stop(self.process)


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


def stop(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the engine's whole process group, SIGKILL after `grace_s`: nothing of it stays."""
    import os
    import signal

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    signal_group(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    signal_group(signal.SIGKILL)  # the group's other members, or a leader that would not stop
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def context_length(folder: Path) -> int | None:
    """The model's positions, from its config.json (None when it names none)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


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
