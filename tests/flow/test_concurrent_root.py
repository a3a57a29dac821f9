"""One artifacts root, one run at a time: a second `alignflow run` on a root another run holds
fails at once with one line naming the holder, and writes nothing; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignflow.store import LOCK_FILE, RootBusy, artifacts_lock

REPO = Path(__file__).resolve().parents[2]


def test_a_second_run_on_a_held_root_fails_fast_in_one_line(tmp_path):
    root = tmp_path / "runs"
    with artifacts_lock(root, "flow run first-run"):
        result = subprocess.run(
            [sys.executable, "-m", "alignflow.app.cli", "run", "configs/micro.yaml",
             "--set", f"run.artifacts_root={root}"],
            cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"error: {root}: another run is using this artifacts root (flow run first-run, pid "
        f"{os.getpid()}); wait for it to finish, or give this run its own run.artifacts_root"
    )
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert sorted(path.name for path in root.iterdir()) == [LOCK_FILE]  # no stages, no store


def test_the_lock_is_free_again_after_its_holder_is_killed(tmp_path):
    code = (
        "import sys, time; from alignflow.store import artifacts_lock\n"
        "with artifacts_lock(sys.argv[1], 'a run killed with -9'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = pytest.raises(RootBusy, match=r"\(a run killed with -9, pid \d+\)")
        with busy, artifacts_lock(tmp_path, "second"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    started = time.monotonic()
    with artifacts_lock(tmp_path, "third"):
        assert (tmp_path / LOCK_FILE).read_text().startswith("third, pid ")
    assert time.monotonic() - started < 5
