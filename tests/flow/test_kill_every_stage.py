"""kill -9 at every stage of one pipeline, and between its registry calls: each rerun picks up
where the killed one stopped (committed stages cached, never trained twice), a second run started
beside a live one fails fast in one line, and the last rerun ends with one champion, no duplicate
model version and no MLflow run left RUNNING.

One artifacts root goes through every kill in turn, so each rerun pays only for the stage it
resumes: the whole sequence is ten `alignflow run` starts on the micro config."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignflow.store import COMPLETE_MARKER, artifacts_lock

REPO = Path(__file__).resolve().parents[2]
STAGES = ["prepare", "sft", "collect", "reward", "policy", "evaluate", "register"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def _command(root: Path, point: str = "none") -> list[str]:
    return [sys.executable, str(REPO / "tests" / "flow" / "killed_run.py"), point, "run",
            "configs/micro.yaml", "--set", f"run.artifacts_root={root}"]  # fmt: skip


def _start(root: Path, point: str = "none") -> subprocess.Popen:
    log = (root.parent / f"run-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(_command(root, point), cwd=REPO, env=ENV, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the run and what it started (its temporary Prefect server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def _completed(root: Path, stage: str) -> list[Path]:
    return sorted(path.parent for path in root.glob(f"stages/{stage}/*/{COMPLETE_MARKER}"))


def _kill_mid(root: Path, stage: str, limit_s: float = 600) -> None:
    """Run until `stage` is working in its `.partial` folder, then kill -9 the whole run."""
    process = _start(root)
    try:
        deadline = time.monotonic() + limit_s
        while not list(root.glob(f"stages/{stage}/*.partial")):
            assert process.poll() is None, f"the run ended before {stage} started"
            assert time.monotonic() < deadline, f"{stage} never started"
            time.sleep(0.05)
    finally:
        _kill_group(process)
    assert not _completed(root, stage), f"{stage} completed before the kill landed"


def _kill_at(root: Path, point: str, limit_s: float = 600) -> None:
    """Run until the run kills itself at `point` (tests/flow/killed_run.py)."""
    process = _start(root, point)
    try:
        assert process.wait(timeout=limit_s) == -signal.SIGKILL, (
            f"the run was not killed at {point}"
        )
    finally:
        _kill_group(process)


def _second_run_fails_fast(root: Path) -> None:
    """While a run holds the root (held in its first stage, prepare), another one on it ends at
    once with one line; the holder is then killed."""
    holder = _start(root, "held:prepare")
    try:
        deadline = time.monotonic() + 300
        while not list(root.glob("stages/*/*.partial")):
            assert holder.poll() is None and time.monotonic() < deadline, "the first run died"
            time.sleep(0.1)
        second = subprocess.run(_command(root), cwd=REPO, env=ENV, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert holder.poll() is None, "the first run did not outlive the second"
    finally:
        _kill_group(holder)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert lines[-1].startswith(f"error: {root}: another run is using this artifacts root")
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]


@pytest.mark.slow  # ~10 pipeline starts (5-6 min): make test-all
def test_kill_at_every_stage_and_between_registry_calls(tmp_path):
    from mlflow import MlflowClient

    root = tmp_path / "runs"
    root.mkdir()
    _second_run_fails_fast(root)  # the holder is killed in prepare
    assert not _completed(root, "prepare")
    for stage in STAGES[1:-1]:
        _kill_mid(root, stage)
        done = STAGES[: STAGES.index(stage)]
        assert [len(_completed(root, earlier)) for earlier in done] == [1] * len(done)
    _kill_at(root, "committed:evaluate")  # committed, its MLflow run never ended
    assert len(_completed(root, "evaluate")) == 1
    _kill_at(root, "logged")  # the policy logged to MLflow, no model version yet
    _kill_at(root, "versioned")  # the model version exists, no alias yet
    assert not _completed(root, "register")

    final = subprocess.run(_command(root), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads((root / "latest" / "summary.json").read_text())
    statuses = {name: stage["status"] for name, stage in summary["stages"].items()}
    assert statuses == {**dict.fromkeys(STAGES[:-1], "cached"), "register": "completed"}
    # every stage trained once: one committed folder each, nothing half-written left
    assert [len(_completed(root, stage)) for stage in STAGES] == [1] * len(STAGES)
    assert not list(root.glob("stages/*/*.partial"))

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    versions = client.search_model_versions("name='alignflow-policy'")
    assert [str(v.version) for v in versions] == ["1"], "a duplicate model version"
    aliases = client.get_registered_model("alignflow-policy").aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {"champion": "1"}
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"]
    # each of the 9 killed runs left its parent run (and the stage it was in) ended as KILLED
    assert sum(run.info.status == "KILLED" for run in runs) >= 9
    with artifacts_lock(root, "after the test"):  # no run holds the root any more
        pass
