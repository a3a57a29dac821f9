"""`python -m tasks.<stage> CONFIG` runs one stage outside Prefect (what launchers start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _stage(stage: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"tasks.{stage}", "configs/micro.yaml",
         f"run.artifacts_root={root}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# slow (15-20 s): the family matrix (tests/flow/test_families.py) took its place in make test's
# 20 minutes; it runs under make test-all
@pytest.mark.slow
def test_stage_module_runs_prepare_into_its_cache_dir(tmp_path):
    result = _stage("prepare", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout[result.stdout.index("{") :])
    output = Path(printed["output"])
    assert printed["status"] == "completed"
    assert (output / "COMPLETE").exists()
    assert (output / "base_model" / "model.safetensors").exists()


def test_stage_module_refuses_to_run_without_its_upstream(tmp_path):
    result = _stage("sft", tmp_path)
    assert result.returncode == 2
    assert "needs a completed 'prepare' stage" in result.stderr
    assert not (tmp_path / "stages" / "sft").exists()
