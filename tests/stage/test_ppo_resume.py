"""A PPO run stopped between checkpoints resumes from the last one and ends exactly where an
uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignflow.models import load_causal_lm, load_scalar_head_model, load_tokenizer
from alignflow.rl.trainer import PPOTrainer

TIMING_KEYS = {"generation_seconds", "training_seconds"}


def _trainer(pipeline_runs, output_dir: Path, updates: int) -> PPOTrainer:
    stages = pipeline_runs.first["stages"]
    sft_dir = str(Path(stages["sft"]["output"]) / "model")
    rm_dir = str(Path(stages["reward"]["output"]) / "model")
    prompts_file = Path(stages["prepare"]["output"]) / "rl_prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    tokenizer = load_tokenizer(sft_dir)
    ppo_cfg = pipeline_runs.cfg.ppo.model_copy(
        update={
            "updates": updates,
            "checkpoint_every": 2,
            "rollout_batch_size": 8,
            "minibatch_size": 4,
            "ppo_epochs": 2,
        }  # fmt: skip
    )
    return PPOTrainer(
        ppo_cfg,
        policy=load_causal_lm(sft_dir),
        reference=load_causal_lm(sft_dir),
        reward_model=load_scalar_head_model(rm_dir, pad_token_id=tokenizer.pad_token_id),
        value_model=load_scalar_head_model(rm_dir, pad_token_id=tokenizer.pad_token_id),
        tokenizer=tokenizer,
        prompts=prompts,
        seed=3,
        output_dir=output_dir,
    )


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


def test_ppo_resumed_from_checkpoint_matches_an_uninterrupted_run(pipeline_runs, tmp_path):
    straight = _trainer(pipeline_runs, tmp_path / "straight", updates=4)
    straight.train()

    # Crash after update 3: its last checkpoint is update 2, so update 3 is lost and redone.
    crashed = _trainer(pipeline_runs, tmp_path / "resumed", updates=3)
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
    assert resumed.kl_ctl.value == straight.kl_ctl.value
