"""`policy.algorithm` swaps what trains the policy inside the same flow: upstream stages are reused,
the policy stage runs the chosen algorithm, and evaluation and the registry take its output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# slow (30-70 s): the family matrix (tests/flow/test_families.py) took its place in make test's
# 20 minutes; it runs under make test-all
@pytest.mark.slow
def test_dpo_run_reuses_upstream_stages_and_is_evaluated_as_the_policy(pipeline_runs, tmp_path):
    # the shared run's upstream outputs, copied: their cache keys do not depend on the root
    for stage in ("prepare", "sft", "collect", "reward"):
        shutil.copytree(pipeline_runs.root / "stages" / stage, tmp_path / "stages" / stage)
    done = subprocess.run(
        [sys.executable, "-m", "alignflow.app.cli", "run", "configs/micro.yaml",
         "--set", f"run.artifacts_root={tmp_path}", "--set", "policy.algorithm=dpo",
         "--set", "policy.dpo.learning_rate=5e-4"],
        cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "latest" / "summary.json").read_text())
    statuses = {name: stage["status"] for name, stage in summary["stages"].items()}
    # DPO learns from the pairs alone: no reward stage runs (alignflow.shape)
    assert statuses == {
        "prepare": "cached", "sft": "cached", "collect": "cached",
        "policy": "completed", "evaluate": "completed", "register": "completed",
    }  # fmt: skip
    policy = json.loads((Path(summary["stages"]["policy"]["output"]) / "result.json").read_text())
    # DPO widened the held-out preference margin beyond the SFT model's
    assert policy["metrics"]["eval_margin_policy"] > policy["metrics"]["eval_margin_sft"]
    assert summary["eval"]["algorithm"] == "dpo"
    eval_md = (Path(summary["stages"]["evaluate"]["output"]) / "eval.md").read_text()
    assert eval_md.startswith(
        "judge: `alignflow.demo:oracle_reward`\n\n| metric | base | sft | dpo |"
    )
    assert "win-rate DPO vs SFT" in eval_md
