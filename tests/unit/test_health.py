"""The checks a trained model passes before its stage commits (alignflow.health)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from alignflow.health import (
    DegenerateModel,
    check_finite_losses,
    check_finite_weights,
    check_reward_model,
)


def test_finite_weights_pass_and_one_nan_tensor_fails_naming_it(tmp_path):
    weights = {"a.weight": torch.ones(2, 2), "b.weight": torch.zeros(3), "ids": torch.arange(3)}
    save_file(weights, tmp_path / "model.safetensors")
    check_finite_weights(tmp_path, "sft", "sft.learning_rate")

    weights["b.weight"][1] = float("nan")
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(DegenerateModel) as caught:
        check_finite_weights(tmp_path, "sft", "sft.learning_rate")
    assert str(caught.value) == (
        "sft: 1 of 3 weight tensors hold NaN or infinity (first: b.weight); "
        "training diverged: lower sft.learning_rate"
    )


def test_an_infinite_weight_in_a_second_shard_fails(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.tensor([1.0, math.inf])}, tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(DegenerateModel, match="1 of 2 weight tensors"):
        check_finite_weights(tmp_path, "reward", "reward_model.learning_rate")


def test_a_nan_logged_loss_fails_with_its_step():
    check_finite_losses([{"loss": 2.0, "step": 1}, {"eval_loss": 1.5, "step": 2}], "sft", "x")
    with pytest.raises(DegenerateModel, match=r"^sft: loss is nan at step 2; training diverged"):
        check_finite_losses([{"loss": 2.0, "step": 1}, {"loss": math.nan, "step": 2}], "sft", "x")


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        ({"accuracy": 0.5, "score_std": 1.0, "eval_pairs": 40}, "accuracy 0.500 is at or below"),
        ({"accuracy": 0.2, "score_std": 1.0, "eval_pairs": 20}, "accuracy 0.200 is at or below"),
        ({"accuracy": 0.0, "score_std": 0.0}, "nearly the same score"),
        ({"accuracy": 0.9, "score_std": 1e-6}, "nearly the same score"),
    ],
)
def test_a_reward_model_at_chance_or_without_spread_fails(metrics, problem):
    with pytest.raises(DegenerateModel, match=problem):
        check_reward_model(metrics, "reward", 0.5, 1e-4)


def test_a_reward_model_above_chance_passes_and_the_checks_can_be_turned_off():
    check_reward_model({"accuracy": 0.55, "score_std": 0.3}, "reward", 0.5, 1e-4)
    check_reward_model({}, "reward", 0.5, 1e-4)  # no held-out pairs: nothing to judge by
    # 3 pairs say too little about accuracy; the spread is still checked
    check_reward_model({"accuracy": 0.0, "score_std": 0.3, "eval_pairs": 3}, "reward", 0.5, 1e-4)
    with pytest.raises(DegenerateModel, match="nearly the same score"):
        check_reward_model(
            {"accuracy": 0.0, "score_std": 0.0, "eval_pairs": 3}, "reward", 0.5, 1e-4
        )
    check_reward_model({"accuracy": 0.1, "score_std": 0.0}, "reward", None, None)
