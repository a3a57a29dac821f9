"""Bad input stops before any work, with one line naming the file and the field, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = ["run", "configs/micro.yaml", "--set", f"run.artifacts_root={tmp_path / 'runs'}"]
    for override in overrides:
        args += ["--set", override]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "alignflow.app.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_unknown_model_path_fails_in_one_line_and_writes_nothing(tmp_path):
    missing = tmp_path / "no-such-model"
    result = _run(tmp_path, "model.source=pretrained", f"model.name_or_path={missing}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: configs/micro.yaml: model.name_or_path:")
    assert str(missing) in errors[0]
    assert not (tmp_path / "runs" / "stages").exists()


def test_wrong_type_in_override_fails_with_exit_code_2(tmp_path):
    result = _run(tmp_path, "policy.ppo.updates=many")
    assert result.returncode == 2
    assert "policy.ppo.updates" in result.stderr
    assert not (tmp_path / "runs").exists()
