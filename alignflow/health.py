"""Checks a trained model must pass before its stage commits: a degenerate result (NaN weights, a
reward model that ranks pairs no better than a coin, or gives every answer the same score) is an
error with a one-line reason, never an output the next stage trains on or the registry promotes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path


class DegenerateModel(RuntimeError):
    """A trained model that must not be used; the message names the stage and what to change."""


def check_finite_weights(folder: Path, what: str, setting: str) -> None:
    """Every floating-point tensor in `folder`'s safetensors files is finite. `setting` is the
    learning rate to name when training diverged (e.g. `sft.learning_rate`)."""
    import torch
    from safetensors import safe_open

    bad, total = [], 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = weights.get_tensor(name)
                total += 1
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(name)
    if bad:
        raise DegenerateModel(
            f"{what}: {len(bad)} of {total} weight tensors hold NaN or infinity (first: {bad[0]}); "
            f"training diverged: lower {setting}"
        )


def check_finite_losses(log_history: Iterable[dict], what: str, setting: str) -> None:
    """Every loss the Trainer logged is a finite number."""
    for entry in log_history:
        for key in ("loss", "train_loss", "eval_loss"):
            value = entry.get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                step = entry.get("step", "?")
                raise DegenerateModel(
                    f"{what}: {key} is {value} at step {step}; training diverged: lower {setting}"
                )


# Fewer held-out pairs than this say too little to fail a reward model on its accuracy: a model at
# 0.7 lands at or below 0.5 on 3 pairs one time in five (its score spread is still checked).
MIN_PAIRS_TO_JUDGE = 20


def check_reward_model(metrics: dict, what: str, fail_at_accuracy: float | None,
                       min_score_std: float | None) -> None:  # fmt: skip
    """A reward model is usable: its held-out pair accuracy above `fail_at_accuracy` (chance is
    0.5; judged on MIN_PAIRS_TO_JUDGE pairs or more) and its scores spread (std over held-out
    answers above `min_score_std`). Without held-out pairs there is nothing to judge by."""
    accuracy, spread = metrics.get("accuracy"), metrics.get("score_std")
    if metrics.get("eval_pairs", MIN_PAIRS_TO_JUDGE) < MIN_PAIRS_TO_JUDGE:
        accuracy = None
    if spread is not None and min_score_std is not None and not spread > min_score_std:
        raise DegenerateModel(
            f"{what}: every held-out answer gets nearly the same score (std {spread:.2g} <= "
            f"reward_model.min_score_std {min_score_std:g}); lower reward_model.learning_rate or check the pairs"
        )
    if accuracy is not None and fail_at_accuracy is not None and accuracy <= fail_at_accuracy:
        raise DegenerateModel(
            f"{what}: held-out pair accuracy {accuracy:.3f} is at or below "
            f"reward_model.fail_at_accuracy {fail_at_accuracy:g} (chance: 0.5) on "
            f"{metrics.get('eval_pairs', '?')} pairs; more or cleaner pairs, or other reward.* "
            "settings"
        )
