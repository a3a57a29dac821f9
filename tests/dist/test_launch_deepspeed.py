"""`alignflow.launch.run(..., deepspeed=...)`: the micro SFT stage under DeepSpeed ZeRO-2 and ZeRO-3
with the shipped configs, one process under torchrun (DeepSpeed on CPU; ~25 s each)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors import safe_open

from alignflow import launch
from tests.dist.conftest import stage_runs

REPO = Path(__file__).resolve().parents[2]
# 20 steps of 32 rows: two logged losses (logging_steps 10) to compare, in seconds.
EPOCHS = 0.8


def _run_sft(root: Path, config: str, lines: list[str]):
    overrides = [f"run.artifacts_root={root}", f"sft.epochs={EPOCHS}"]
    deepspeed = REPO / "infra" / "deepspeed" / config
    config_path = REPO / "configs" / "micro.yaml"
    return launch.run("sft", config_path, overrides, deepspeed=deepspeed, on_line=lines.append)


def _weight_sizes(model_dir: Path) -> dict[str, int]:
    """Number of values in each saved tensor."""
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        return {name: math.prod(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118


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
    sizes = _weight_sizes(Path(result.output) / "model")
    assert min(sizes.values()) > 0
    assert not (Path(result.output) / "model" / "training_args.bin").exists()  # safetensors only
