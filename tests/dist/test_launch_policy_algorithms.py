"""`alignflow launch policy` with the TRL algorithms (policy.algorithm dpo, grpo, ...): two real gloo
DDP processes train, rank 0 alone saves the policy, evaluates it and commits the stage; and DPO
under DeepSpeed on one process (~20-35 s a launch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignflow import launch
from alignflow.algorithms.common import completions_per_process
from alignflow.config import GRPOConfig
from alignflow.models import load_causal_lm, load_tokenizer
from alignflow.pipeline import tracking_uri
from tests.conftest import micro_config
from tests.dist.conftest import stage_runs, weight_sizes

REPO = Path(__file__).resolve().parents[2]
NPROC = 2
# A high learning rate moves the tiny model far enough in a few steps (tests/stage/test_algorithms).
DPO = ("policy.algorithm=dpo", "policy.dpo.learning_rate=5e-4")


def _launch_two(root: Path, *overrides: str) -> str:
    command = [sys.executable, "-m", "alignflow.app.cli", "launch", "policy", "configs/micro.yaml",
               "--nproc", str(NPROC), "--set", f"run.artifacts_root={root}"]  # fmt: skip
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def _committed_policy(root: Path) -> tuple[Path, dict]:
    """The one committed policy stage dir and its result; its policy is plain safetensors."""
    (output,) = (root / "stages" / "policy").iterdir()  # committed: no .partial left beside it
    assert (output / "COMPLETE").exists()
    assert not (output / "checkpoints").exists()
    policy = output / "policy"
    assert (policy / "model.safetensors").exists()
    assert not (policy / "training_args.bin").exists()
    assert not (policy / "adapter_config.json").exists()
    return output, json.loads((output / "result.json").read_text())


def _only_run_of_two_processes(root: Path, result: dict):
    (run,) = stage_runs(root, "policy")  # rank 1 opened none
    assert run.info.run_id == result["mlflow_run_id"]
    assert run.data.tags["alignflow.world_size"] == str(NPROC)
    return run


def test_dpo_on_two_ddp_processes_learns_and_rank_zero_commits_it(rewarded_root):
    # 487 pairs, 244 per rank in batches of 16: 21 steps, losses logged at steps 10 and 20.
    stdout = _launch_two(rewarded_root, *DPO, "policy.dpo.epochs=1.3")
    assert "policy: completed" in stdout.splitlines()[-1]
    _, result = _committed_policy(rewarded_root)
    metrics = result["metrics"]
    assert metrics["final_loss"] < metrics["first_loss"]
    # rank 0 evaluated the saved policy on the held-out pairs: it prefers chosen more than SFT does
    assert metrics["eval_margin_policy"] > metrics["eval_margin_sft"] + 0.3
    assert metrics["eval_accuracy_policy"] > 0.5
    run = _only_run_of_two_processes(rewarded_root, result)
    client = MlflowClient(tracking_uri(micro_config(rewarded_root)))
    logged_steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert logged_steps == [10, 20]  # once per logging step: rank 1 logged nothing


def test_grpo_on_two_ddp_processes_raises_the_reward_and_saves_a_loadable_policy(rewarded_root):
    steps = 16  # 16 completions per rank and step: 4 prompts x 4 generations each
    stdout = _launch_two(
        rewarded_root,
        "policy.algorithm=grpo",
        f"policy.grpo.steps={steps}",
        "policy.grpo.batch_size=32",
        "policy.grpo.learning_rate=5e-4",
        "policy.grpo.sampling.max_new_tokens=24",
    )
    assert "policy: completed" in stdout.splitlines()[-1]
    output, result = _committed_policy(rewarded_root)
    metrics = result["metrics"]
    assert metrics["steps"] == steps
    run = _only_run_of_two_processes(rewarded_root, result)
    client = MlflowClient(tracking_uri(micro_config(rewarded_root)))
    history = client.get_metric_history(run.info.run_id, "reward")  # both ranks' completions
    rewards = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(rewards) == steps  # rank 0 logged each step once
    assert sum(rewards[-4:]) > sum(rewards[:4]) + 4 * 0.15  # mean reward rose
    tokenizer = load_tokenizer(str(output / "policy"))
    model = load_causal_lm(str(output / "policy"), tokenizer=tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_online_batch_counts_completions_over_all_processes(monkeypatch):
    grpo = GRPOConfig(batch_size=12, num_generations=3)
    assert completions_per_process("grpo", grpo) == 12
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert completions_per_process("grpo", grpo) == 6
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match=r"policy\.grpo\.batch_size \(12\) .* 8 processes") as e:
        completions_per_process("grpo", grpo)
    assert "\n" not in str(e.value) and "e.g. 24" in str(e.value)


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_dpo_trains_under_deepspeed_on_one_process(rewarded_root, config):
    lines: list[str] = []
    overrides = [f"run.artifacts_root={rewarded_root}", *DPO, "policy.dpo.epochs=0.3"]
    deepspeed = REPO / "infra" / "deepspeed" / config
    result = launch.run(
        "policy", REPO / "configs" / "micro.yaml", overrides, deepspeed=deepspeed,
        on_line=lines.append,
    )  # fmt: skip
    assert result.status == "completed"
    assert "--deepspeed" in lines[0]
    output, _ = _committed_policy(rewarded_root)
    assert result.metrics["eval_margin_policy"] > result.metrics["eval_margin_sft"] + 0.3
    (run,) = stage_runs(rewarded_root, "policy")
    assert run.data.tags["alignflow.deepspeed"] == config
    # ZeRO-3 partitions the weights: the save gathered them rather than writing empty tensors.
    assert min(weight_sizes(output / "policy").values()) > 0
