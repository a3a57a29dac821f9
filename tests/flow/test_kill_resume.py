"""A pipeline killed in the middle of PPO resumes PPO from its last checkpoint when rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _command(root: Path) -> list[str]:
    return [sys.executable, "-m", "alignflow.app.cli", "run", "configs/micro.yaml",
            "--set", f"run.artifacts_root={root}", "--set", "policy.ppo.checkpoint_every=2"]  # fmt: skip


def _wait_for_checkpoint(root: Path, process: subprocess.Popen, limit_s: float = 600) -> Path:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = sorted(root.glob("stages/policy/*.partial/checkpoints/update-*"))
        if found:
            return found[-1]
        assert process.poll() is None, "the run ended before PPO wrote a checkpoint"
        time.sleep(0.2)
    raise AssertionError("no PPO checkpoint appeared")


# slow (30-70 s): the family matrix (tests/flow/test_families.py) took its place in make test's
# 20 minutes; it runs under make test-all
@pytest.mark.slow
def test_rerun_after_kill_resumes_ppo_from_its_checkpoint(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        _command(tmp_path), cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(tmp_path, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not list(tmp_path.glob("stages/policy/*/COMPLETE"))

    rerun = subprocess.run(
        _command(tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((tmp_path / "latest" / "summary.json").read_text())
    statuses = {name: stage["status"] for name, stage in summary["stages"].items()}
    assert statuses["sft"] == statuses["reward"] == "cached"
    assert statuses["policy"] == "completed"
    ppo = json.loads((Path(summary["stages"]["policy"]["output"]) / "result.json").read_text())
    assert ppo["metrics"]["resumed_from_update"] >= 2
    assert ppo["metrics"]["updates"] == 30  # the whole history: resumed, not restarted
    # the killed run's MLflow runs (parent and PPO stage) were ended as KILLED by the rerun
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [run for run in runs if run.info.status == "RUNNING"]
    assert sum(run.info.status == "KILLED" for run in runs) >= 2
