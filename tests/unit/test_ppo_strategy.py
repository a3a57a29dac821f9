"""How a DeepSpeed config is completed for the PPO engine (alignflow.rl.strategy.fill_auto), and
what it refuses; the engine itself is tested under torchrun in tests/dist."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignflow.config import PPOConfig
from alignflow.rl.strategy import fill_auto, make_strategy

INFRA = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"


class Policy(torch.nn.Module):
    def __init__(self, hidden: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(hidden, hidden, dtype=dtype)
        self.config = SimpleNamespace(hidden_size=hidden)


def _shipped(name: str) -> dict:
    return json.loads((INFRA / name).read_text())


def test_zero3_auto_fields_follow_the_ppo_minibatch_and_hidden_size():
    cfg = PPOConfig(rollout_batch_size=32, minibatch_size=8, max_grad_norm=0.5)
    config = fill_auto(_shipped("zero3.json"), cfg, Policy(hidden=64), "zero3.json")
    # one optimizer step per minibatch on one process: 8 = 8 x 1 x 1
    assert config["train_batch_size"] == 8
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.5
    zero = config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 64 * 64 == 4096
    assert zero["stage3_prefetch_bucket_size"] == 3686  # int(0.9 * 4096)
    assert zero["stage3_param_persistence_threshold"] == 640
    assert zero["stage3_max_live_parameters"] == 1_000_000_000  # set values are kept
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False  # fp32
    assert "auto" not in json.dumps(config)


def test_mixed_precision_follows_the_weights_dtype():
    config = fill_auto(
        _shipped("zero2.json"), PPOConfig(), Policy(16, torch.bfloat16), "zero2.json"
    )
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False


def test_offload_optimizer_section_gets_the_policy_learning_rate():
    cfg = PPOConfig(learning_rate=2e-5)
    config = fill_auto(_shipped("zero2_offload.json"), cfg, Policy(16), "zero2_offload.json")
    params = config["optimizer"]["params"]
    assert params == {"lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-5, "weight_decay": 0.01}


def test_the_source_config_is_not_modified():
    source = _shipped("zero2.json")
    fill_auto(source, PPOConfig(), Policy(16), "zero2.json")
    assert source == _shipped("zero2.json")


def test_a_scheduler_section_is_refused_with_the_setting_that_replaces_it():
    source = {**_shipped("zero2.json"), "scheduler": {"type": "WarmupLR"}}
    with pytest.raises(ValueError, match="remove its 'scheduler' section.*policy.ppo.lr_schedule"):
        fill_auto(source, PPOConfig(), Policy(16), "my.json")


def test_a_batch_size_that_disagrees_with_the_minibatch_is_refused():
    source = {**_shipped("zero2.json"), "train_micro_batch_size_per_gpu": 4}
    with pytest.raises(ValueError, match=r"my.json: train_micro_batch_size_per_gpu is 4.*= 16"):
        fill_auto(source, PPOConfig(minibatch_size=16), Policy(16), "my.json")
    # the value PPO would set anyway is accepted
    source["train_micro_batch_size_per_gpu"] = 16
    assert fill_auto(source, PPOConfig(minibatch_size=16), Policy(16), "my.json")


def test_quantized_ppo_is_refused_under_deepspeed():
    cfg = PPOConfig(lora={"r": 4}, quantization="4bit")
    with pytest.raises(
        ValueError, match="policy.ppo.quantization '4bit' does not run under DeepSpeed"
    ):
        make_strategy(cfg, Policy(16), Policy(16), _shipped("zero2.json"))
