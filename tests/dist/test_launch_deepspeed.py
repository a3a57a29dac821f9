"""DeepSpeed ZeRO-2 and ZeRO-3 with the shipped configs, one process under torchrun (DeepSpeed on
CPU, STACK.md; ~25 s a launch): the micro SFT stage through `alignflow.launch.run(...,
deepspeed=...)`, and our PPO engine under a DeepSpeed engine, compared with plain torch, resumed
from a DeepSpeed checkpoint, and as the whole policy stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignflow import launch
from alignflow.pipeline import stage_dir
from tests.conftest import micro_config
from tests.dist.conftest import stage_runs, weight_sizes
from tests.stage.ppo_setup import micro_models

REPO = Path(__file__).resolve().parents[2]
# 20 steps of 32 rows: two logged losses (logging_steps 10) to compare, in seconds.
EPOCHS = 0.8


def _run_sft(root: Path, config: str, lines: list[str]):
    overrides = [f"run.artifacts_root={root}", f"sft.epochs={EPOCHS}"]
    deepspeed = REPO / "infra" / "deepspeed" / config
    config_path = REPO / "configs" / "micro.yaml"
    return launch.run("sft", config_path, overrides, deepspeed=deepspeed, on_line=lines.append)


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_sft_trains_under_deepspeed_on_one_process(prepared_root, config):
    lines: list[str] = []
    result = _run_sft(prepared_root, config, lines)
    assert result.status == "completed"
    assert "--deepspeed" in lines[0]  # the command it ran, echoed first
    assert result.metrics["final_loss"] < result.metrics["first_loss"]
    assert (Path(result.output) / "COMPLETE").exists()
    (run,) = stage_runs(prepared_root, "sft")
    assert run.data.tags["alignflow.deepspeed"] == config

    # ZeRO-3 partitions the weights: the save must gather them, not write empty placeholders
    sizes = weight_sizes(Path(result.output) / "model")
    assert min(sizes.values()) > 0
    assert not (Path(result.output) / "model" / "training_args.bin").exists()  # safetensors only


PPO_RUN = Path(__file__).with_name("ppo_deepspeed_run.py")


def _rel_close(got: float, want: float, tolerance: float) -> bool:
    return abs(got - want) <= tolerance * max(1.0, abs(want))


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_ppo_under_deepspeed_matches_plain_torch_and_resumes_exactly(
    pipeline_runs, tmp_path, config
):
    """One process, fp32: DeepSpeed's flat-partition AdamW and clipping do the same arithmetic as
    torch's, so the runs agree to float rounding; a run killed after update 3 resumes from its
    update-2 DeepSpeed checkpoint (weights, optimizer shards) and ends where the straight one does."""
    models = micro_models(pipeline_runs)
    spec = {**vars(models), "ppo_cfg": None, "ppo": models.ppo_cfg.model_dump()}
    (tmp_path / "models.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=1", str(PPO_RUN), str(REPO / "infra" / "deepspeed" / config),
               str(tmp_path / "models.json"), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())

    assert results["resumed_from"] == 2
    assert results["optimizer_steps"] == 4 * 2 * 2  # updates x epochs x minibatches
    keys = ("reward", "kl", "policy_loss", "value_loss", "approx_kl", "entropy", "clipfrac")
    for torch_step, ds_step, resumed_step in zip(
        results["torch"], results["deepspeed"], results["resumed"], strict=True
    ):
        for key in keys:
            assert _rel_close(ds_step[key], torch_step[key], 1e-4), (key, ds_step, torch_step)
            assert _rel_close(resumed_step[key], ds_step[key], 1e-5), (key, resumed_step)

    # Saved from rank 0 with every weight whole (ZeRO-3 gathers its shards first).
    weights = {name: load_file(tmp_path / name / "policy" / "model.safetensors")
               for name in ("torch", "deepspeed", "resumed")}  # fmt: skip
    assert weights["deepspeed"].keys() == weights["torch"].keys()
    for name, tensor in weights["torch"].items():
        torch.testing.assert_close(weights["deepspeed"][name], tensor, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(weights["resumed"][name], weights["deepspeed"][name])


def test_ppo_stage_under_deepspeed_zero3_raises_reward_and_saves_a_whole_policy(rewarded_root):
    lines: list[str] = []
    overrides = [f"run.artifacts_root={rewarded_root}", "policy.ppo.updates=12", "policy.ppo.checkpoint_every=4"]
    result = launch.run(
        "policy",
        REPO / "configs" / "micro.yaml",
        overrides,
        deepspeed=REPO / "infra" / "deepspeed" / "zero3.json",
        on_line=lines.append,
    )
    assert result.status == "completed"
    assert result.metrics["updates"] == 12
    assert result.metrics["reward_last"] > result.metrics["reward_first"]
    policy_dir = Path(result.output) / "policy"
    sft_dir = stage_dir(micro_config(rewarded_root), "sft").final / "model"
    # every tensor whole, as in the SFT model it started from
    assert weight_sizes(policy_dir) == weight_sizes(sft_dir)
    assert not (Path(result.output) / "checkpoints").exists()
    (run,) = stage_runs(rewarded_root, "policy")
    assert run.data.tags["alignflow.deepspeed"] == "zero3.json"
