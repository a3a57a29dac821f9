"""A PPO run stopped between checkpoints resumes from the last one and ends exactly where an
uninterrupted run with the same seed ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignflow.rl.trainer import PPOTrainer
from tests.stage.ppo_setup import Crash, crash_after, make_trainer, micro_models

TIMING_KEYS = {"generation_seconds", "training_seconds"}


def _trainer(pipeline_runs, output_dir: Path, updates: int, log_metrics=None) -> PPOTrainer:
    extra = {"log_metrics": log_metrics} if log_metrics else {}
    return make_trainer(
        micro_models(pipeline_runs),
        output_dir,
        updates=updates,
        # Every piece of state a resume must restore: LR schedule, reward moments, KL coef.
        lr_schedule="linear",
        reward_normalization=True,
        reward_clip=2.0,
        kl=pipeline_runs.cfg.policy.ppo.kl.model_copy(
            update={"adaptive": True, "target": 0.01, "horizon": 64}
        ),
        **extra,
    )


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


def test_ppo_resumed_from_checkpoint_matches_an_uninterrupted_run(pipeline_runs, tmp_path):
    straight = _trainer(pipeline_runs, tmp_path / "straight", updates=4)
    straight.train()

    # Crash after update 3: its last checkpoint is update 2, so update 3 is lost and redone.
    crashed = _trainer(pipeline_runs, tmp_path / "resumed", updates=4, log_metrics=crash_after(3))
    with pytest.raises(Crash):
        crashed.train()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "update-000002"
    ]
    resumed = _trainer(pipeline_runs, tmp_path / "resumed", updates=4)
    resumed.train()

    assert resumed.update_index == straight.update_index == 4
    # Bit-for-bit on CPU; the tolerance only absorbs float reassociation on other hardware.
    expected, actual = _without_timings(straight.history), _without_timings(resumed.history)
    for want, got in zip(expected, actual, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert abs(got[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), key
    for name, weight in straight.policy.state_dict().items():
        torch.testing.assert_close(resumed.policy.state_dict()[name], weight, rtol=1e-5, atol=1e-6)
    assert resumed.resumed_from == 2
    assert resumed.kl_ctl.value == straight.kl_ctl.value != pipeline_runs.cfg.policy.ppo.kl.coef
    assert resumed.reward_moments.state_dict() == straight.reward_moments.state_dict()
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


class _Planted:
    """Unpickling this touches a file: what a hostile checkpoint would do with a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_ppo_resume_refuses_a_pickle_planted_in_a_checkpoint(pipeline_runs, tmp_path):
    from alignflow.rl.trainer import CheckpointError

    crashed = _trainer(pipeline_runs, tmp_path / "run", updates=3, log_metrics=crash_after(3))
    with pytest.raises(Crash):
        crashed.train()
    [checkpoint] = (tmp_path / "run" / "checkpoints").iterdir()
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)  # ours loads safely
    marker = tmp_path / "code-ran"
    torch.save({**state, "history": _Planted(marker)}, checkpoint / "trainer_state.pt")

    with pytest.raises(CheckpointError, match="trainer_state.pt: refused"):
        _trainer(pipeline_runs, tmp_path / "run", updates=3).train()
    assert not marker.exists()
