"""MLflow runs a killed process left RUNNING are ended as KILLED by the next run; a live run and
a run suspended for people's labels are left as they are (real SQLite store, real kill -9)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from alignflow import tracking

REPO = Path(__file__).resolve().parents[2]

# A pipeline-like process: a parent run and a stage run open, then it hangs until killed.
HOLDER = """
import sys, time
from alignflow import tracking
ctx = tracking.TrackingContext(tracking_uri=sys.argv[1], experiment_id=sys.argv[2])
parent = tracking.start_parent_run(ctx, "killed", {}, "{}")
with tracking.stage_run(ctx.model_copy(update={"parent_run_id": parent}), "sft", {}) as run_id:
    print(parent, run_id, flush=True)
    time.sleep(600)
"""


def _holder(uri: str, experiment: str) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, experiment],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    return process, process.stdout.readline().split()


def test_runs_of_a_killed_process_end_as_killed_and_others_stay(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.open_experiment(uri, "exp", tmp_path)
    client = MlflowClient(uri)
    killed, killed_runs = _holder(uri, experiment)
    alive, alive_runs = _holder(uri, experiment)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        # a flow suspended for labels: its process is gone too, on purpose
        ctx = tracking.TrackingContext(tracking_uri=uri, experiment_id=experiment)
        waiting = tracking.start_parent_run(ctx, "waiting", {}, "{}")
        client.set_tag(waiting, tracking.PROCESS_TAG, client.get_run(killed_runs[0]).data.tags[
            tracking.PROCESS_TAG])  # fmt: skip
        tracking.mark_suspended(uri, waiting, suspended=True)

        ended = tracking.end_abandoned_runs(uri, experiment)

        assert sorted(ended) == sorted(killed_runs)
        status = {
            run_id: client.get_run(run_id).info.status
            for run_id in [*killed_runs, *alive_runs, waiting]
        }
        assert [status[run_id] for run_id in killed_runs] == ["KILLED", "KILLED"]
        assert [status[run_id] for run_id in alive_runs] == ["RUNNING", "RUNNING"]
        assert status[waiting] == "RUNNING"
        assert tracking.end_abandoned_runs(uri, experiment) == []  # nothing twice
    finally:
        alive.kill()
        alive.wait(timeout=30)
