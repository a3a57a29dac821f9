"""`alignflow launch STAGE --nproc 2`: two real gloo DDP processes train the micro SFT and reward
stages; rank 0 alone commits the stage dir and owns the one MLflow run (~20 s a launch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignflow.pipeline import tracking_uri
from tests.conftest import micro_config
from tests.dist.conftest import seed_root, stage_runs

REPO = Path(__file__).resolve().parents[2]
NPROC = 2


def _launch(root: Path, stage: str, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alignflow.app.cli", "launch", stage, "configs/micro.yaml",
               "--nproc", str(NPROC), "--set", f"run.artifacts_root={root}", *options]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def _committed(root: Path, stage: str) -> tuple[Path, dict]:
    (output,) = (root / "stages" / stage).iterdir()  # committed: no .partial left beside it
    assert (output / "COMPLETE").exists()
    return output, json.loads((output / "result.json").read_text())


def _check_one_run_of_two_processes(root: Path, stage: str, result: dict, steps: int) -> None:
    """One MLflow run (rank 1 opened none), and `steps` optimizer steps: each process trained
    on half the rows, so a step took a global batch twice the per-device one."""
    (run,) = stage_runs(root, stage)
    assert run.info.run_id == result["mlflow_run_id"]
    assert run.data.tags["alignflow.world_size"] == str(NPROC)
    client = MlflowClient(tracking_uri(micro_config(root)))
    (final,) = client.get_metric_history(run.info.run_id, "train_loss")
    assert final.step == steps


def _steps(rows: int, batch_size: int, epochs: float) -> int:
    return math.ceil(epochs * math.ceil(math.ceil(rows / NPROC) / batch_size))


def test_sft_on_two_ddp_processes_trains_once_and_a_relaunch_reuses_it(prepared_root):
    epochs = 1.6  # 21 steps: losses logged at steps 10 and 20
    done = _launch(prepared_root, "sft", "--set", f"sft.epochs={epochs}")
    assert "sft: completed" in done.stdout.splitlines()[-1]
    output, result = _committed(prepared_root, "sft")
    assert (output / "model" / "model.safetensors").stat().st_size > 100_000
    metrics = result["metrics"]
    assert metrics["final_loss"] < metrics["first_loss"]
    steps = _steps(metrics["train_rows"], micro_config(prepared_root).sft.batch_size, epochs)
    _check_one_run_of_two_processes(prepared_root, "sft", result, steps)

    # Again, under accelerate: every rank learns from rank 0 that the stage is complete.
    again = _launch(
        prepared_root, "sft", "--set", f"sft.epochs={epochs}", "--launcher", "accelerate"
    )
    assert "sft: cached" in again.stdout.splitlines()[-1]
    assert len(stage_runs(prepared_root, "sft")) == 1


@pytest.fixture
def collected_root(pipeline_runs, tmp_path) -> Path:
    seed_root(pipeline_runs, tmp_path, ("prepare", "sft", "collect"))
    return tmp_path


def test_reward_model_on_two_ddp_processes_learns_and_rank_zero_commits_it(collected_root):
    epochs = 3  # 24 steps: losses logged at steps 10 and 20
    done = _launch(collected_root, "reward", "--set", f"reward_model.epochs={epochs}")
    assert "reward: completed" in done.stdout.splitlines()[-1]
    output, result = _committed(collected_root, "reward")
    assert (output / "model" / "model.safetensors").exists()
    metrics = result["metrics"]
    assert metrics["final_loss"] < metrics["first_loss"]
    assert metrics["accuracy"] > 0.5
    pairs = metrics["train_pairs"] - metrics["dropped_too_long"]
    steps = _steps(pairs, micro_config(collected_root).reward_model.batch_size, epochs)
    _check_one_run_of_two_processes(collected_root, "reward", result, steps)


def test_ppo_on_two_ddp_processes_keeps_replicas_identical_and_raises_reward(rewarded_root):
    # 16 rollouts per update, 8 per rank; PPOTrainer.check_replicas raises if the two ranks'
    # weights differ after training, so completing proves the gradients were averaged.
    done = _launch(
        rewarded_root, "policy", "--set", "policy.ppo.updates=12", "--set", "policy.ppo.checkpoint_every=4"
    )
    assert "policy: completed" in done.stdout.splitlines()[-1]
    output, result = _committed(rewarded_root, "policy")
    assert (output / "policy" / "model.safetensors").exists()
    metrics = result["metrics"]
    assert metrics["processes"] == NPROC and metrics["updates"] == 12
    assert metrics["reward_last"] > metrics["reward_first"]
    (run,) = stage_runs(rewarded_root, "policy")
    assert run.data.tags["alignflow.world_size"] == str(NPROC)
    client = MlflowClient(tracking_uri(micro_config(rewarded_root)))
    assert len(client.get_metric_history(run.info.run_id, "kl")) == 12  # rank 0 logged, once each
