"""Where stage outputs live, their cache keys, and the write-then-rename that keeps them whole.

`<artifacts_root>/stages/<stage>/<cache_key>/` holds a completed stage (with a `COMPLETE` marker and
`result.json`); while it runs, the stage writes into `<cache_key>.partial/`, whose checkpoints a
rerun resumes from. Nothing half-written is ever read by the next stage.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

COMPLETE_MARKER = "COMPLETE"
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_CODE_DIRS = ("alignflow", "tasks")


class StageResult(BaseModel):
    """What a stage hands the next one: paths on disk, never live objects."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    cache_key: str
    output: str
    mlflow_run_id: str | None = None
    status: Literal["completed", "cached", "failed"] = "completed"
    seconds: float = 0.0
    metrics: dict[str, Any] = {}

    def path(self, *parts: str) -> Path:
        return Path(self.output, *parts)


@lru_cache(maxsize=1)
def code_version() -> str:
    """Digest of the library and stage code: a code change invalidates cached stage outputs."""
    files = [
        path for folder in _CODE_DIRS for path in sorted((_PACKAGE_ROOT / folder).rglob("*.py"))
    ]
    return files_digest(files, relative_to=_PACKAGE_ROOT) or ""


def files_digest(paths: list[Path | None], relative_to: Path | None = None) -> str | None:
    """One digest over the files' names and contents (None where none of them is a file). Each
    file's content hash is kept while its size and mtime stay, so asking again reads nothing."""
    files = [(path, info) for path in paths if (info := _regular_file(path)) is not None]
    if not files:
        return None
    digest = hashlib.sha256()
    for path, info in files:
        digest.update(str(path.relative_to(relative_to) if relative_to else path).encode())
        digest.update(_content_digest(path.absolute(), info.st_size, info.st_mtime_ns))
    return digest.hexdigest()[:12]


def _regular_file(path: Path | None) -> os.stat_result | None:
    """`path`'s stat where it is a regular file (links followed), else None: one call."""
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


@lru_cache(maxsize=4096)
def _content_digest(path: Path, size: int, mtime_ns: int) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def cache_key(stage: str, settings: Any, upstream: list[str]) -> str:
    payload = json.dumps(
        {"stage": stage, "settings": settings, "upstream": upstream, "code": code_version()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class StageDir:
    def __init__(self, artifacts_root: str | Path, stage: str, key: str) -> None:
        self.final = Path(artifacts_root) / "stages" / stage / key
        self.partial = self.final.with_name(f"{key}.partial")

    def completed(self) -> bool:
        return (self.final / COMPLETE_MARKER).exists()

    def load(self) -> StageResult:
        return StageResult.model_validate_json((self.final / RESULT_FILE).read_text())

    def begin(self) -> Path:
        """The working directory; an existing one is kept so the stage can resume its checkpoints."""
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial

    def commit(self, result: StageResult) -> None:
        (self.partial / RESULT_FILE).write_text(result.model_dump_json(indent=2))
        if self.final.exists():  # a completed dir without its marker is debris from a crash
            shutil.rmtree(self.final)
        self.partial.rename(self.final)
        (self.final / COMPLETE_MARKER).write_text("ok\n")


LOCK_FILE = ".lock"


class RootBusy(RuntimeError):
    """Another run holds the artifacts root; the message names it."""


@contextmanager
def artifacts_lock(artifacts_root: str | Path, holder: str) -> Iterator[None]:
    """Hold `<artifacts_root>/.lock` while a flow runs, so two runs never train into the same
    stage folders. A second run fails at once with RootBusy naming the holder. The OS drops the
    lock with its process, so a killed run leaves no stale lock behind."""
    root = Path(artifacts_root)
    root.mkdir(parents=True, exist_ok=True)
    handle = (root / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        held_by = handle.read().strip() or "another process"
        handle.close()
        raise RootBusy(
            f"{root}: another run is using this artifacts root ({held_by}); wait for it to "
            "finish, or give this run its own run.artifacts_root"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder}, pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_root_free(artifacts_root: str | Path) -> None:
    """Raise RootBusy now when another run holds the root: the command line asks before it
    starts a flow, so a busy root fails in a second, not after Prefect has started. The flow
    takes the lock itself (artifacts_lock); this only answers earlier. Creates nothing."""
    if (Path(artifacts_root) / LOCK_FILE).exists():
        with artifacts_lock(artifacts_root, "a pre-flight check"):
            pass


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def point_latest(artifacts_root: str | Path, run_dir: Path) -> None:
    """Make `<artifacts_root>/latest` a symlink to the newest run directory."""
    latest = Path(artifacts_root) / "latest"
    tmp = latest.with_name("latest.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    tmp.replace(latest)
