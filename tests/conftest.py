"""Shared fixtures. One real pipeline run (Prefect flow + SQLite MLflow, configs/micro.yaml) is
made once per session and read by every flow and stage test."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

# Offline and quiet: tests never reach a hub or a telemetry endpoint.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Our library's log lines outside a flow run go to the console only, as under the CLI.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Every test names its own MLflow store; a developer's server must never receive test runs.
os.environ.pop("ALIGNFLOW_TRACKING_URI", None)


@dataclass
class PipelineRuns:
    cfg: object
    root: Path
    first: dict  # summary of the first run (every stage computed)
    second: dict  # summary of the same command run again (every stage cached)
    flow_run_states: list[str]
    artifact_keys: list[str]
    artifact_types: dict[str, str]  # key -> the Prefect artifact's type and how its data opens


def micro_config(root: Path, *overrides: str):
    from alignflow.config import load_config

    return load_config(REPO / "configs" / "micro.yaml", [f"run.artifacts_root={root}", *overrides])


@pytest.fixture(scope="session")
def pipeline_runs(tmp_path_factory) -> PipelineRuns:
    from prefect import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.rlhf import rlhf

    root = tmp_path_factory.mktemp("pipeline")
    cfg = micro_config(root)
    with prefect_test_harness():
        first = rlhf(config=cfg)
        second = rlhf(config=cfg)
        with get_client(sync_client=True) as client:
            states = [run.state.type.value for run in client.read_flow_runs()]
            artifacts = client.read_artifacts()
            keys = [artifact.key for artifact in artifacts]
            types = {a.key: f"{a.type} {str(a.data)[:22]}" for a in artifacts if a.key}
    return PipelineRuns(cfg, root, first, second, states, keys, types)


# What a test session may start and must not leave behind: served models, our CLI, Prefect and
# MLflow servers (matched on their command lines).
_OURS = (b"transformers", b"alignflow", b"prefect", b"uvicorn", b"mlflow", b"vllm")


def _started_after(pid: int, since: int) -> bool:
    """Whether process `pid` started after clock tick `since` (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) >= since


# Set for the session and inherited by everything it starts (orphans included, which lose their
# parent): what tells this session's processes from another one's, or a user's, on the machine.
SESSION_ENV = "ALIGNFLOW_TEST_SESSION"


def _leftovers(since: int, marker: bytes) -> list[str]:
    """Processes this session started (they carry `marker` in their environment), other than
    this one, whose command is one of ours."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(name in word for word in words for name in _OURS):
                continue
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if _started_after(pid, since):
                found.append(f"{pid}: {b' '.join(words).decode(errors='replace')[:200]}")
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests():
    """Torn down last: every server and engine a test started has stopped (10 s of grace); any
    left are killed and the session fails, naming them. Only this session's processes: never
    another session's or a user's run on the same machine."""
    import signal
    import time
    import uuid

    since = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    os.environ[SESSION_ENV] = uuid.uuid4().hex
    marker = f"{SESSION_ENV}={os.environ[SESSION_ENV]}".encode()
    yield
    deadline = time.monotonic() + 10
    while (left := _leftovers(since, marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for line in left:
        with contextlib.suppress(OSError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    assert not left, "processes outlived the tests:\n" + "\n".join(left)
