"""Build PPO trainers on the session's micro pipeline outputs (SFT policy, reward model, prompts)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alignflow.models import load_causal_lm, load_scalar_head_model, load_tokenizer
from alignflow.rl.trainer import PPOTrainer


class Crash(Exception):
    """Stands in for a killed process: raised from the metrics callback after an update."""


def crash_after(updates: int):
    """A `log_metrics` callback that raises Crash once `updates` updates have run."""

    def log_metrics(metrics: dict, step: int) -> None:
        if step + 1 == updates:
            raise Crash

    return log_metrics


@dataclass
class MicroModels:
    sft_dir: str
    rm_dir: str
    prompt_rows: list[dict]
    ppo_cfg: object  # the micro config's PPOConfig


def micro_models(pipeline_runs) -> MicroModels:
    stages = pipeline_runs.first["stages"]
    prompts_file = Path(stages["prepare"]["output"]) / "rl_prompts.jsonl"
    return MicroModels(
        sft_dir=str(Path(stages["sft"]["output"]) / "model"),
        rm_dir=str(Path(stages["reward"]["output"]) / "model"),
        prompt_rows=[json.loads(line) for line in prompts_file.read_text().splitlines()],
        ppo_cfg=pipeline_runs.cfg.policy.ppo,
    )


def make_trainer(
    models: MicroModels,
    output_dir: Path,
    rewarder=None,
    seed: int = 3,
    deepspeed: dict | None = None,
    **settings,
) -> PPOTrainer:
    """A small PPO run (8 prompts per update) with `settings` overriding the micro PPO config;
    `log_metrics` / `log_samples` in settings go to the trainer instead. `deepspeed`: a DeepSpeed
    config (the process must have been started by torchrun)."""
    callbacks = {k: settings.pop(k) for k in ("log_metrics", "log_samples") if k in settings}
    cfg = models.ppo_cfg.model_copy(
        update={
            "checkpoint_every": 2,
            "rollout_batch_size": 8,
            "minibatch_size": 4,
            "ppo_epochs": 2,
            **settings,
        }  # fmt: skip
    )
    tokenizer = load_tokenizer(models.sft_dir)
    pad = tokenizer.pad_token_id
    return PPOTrainer(
        cfg,
        policy=load_causal_lm(models.sft_dir),
        reference=load_causal_lm(models.sft_dir),
        reward_model=rewarder or load_scalar_head_model(models.rm_dir, pad_token_id=pad),
        value_model=load_scalar_head_model(models.rm_dir, pad_token_id=pad),
        tokenizer=tokenizer,
        prompts=models.prompt_rows,
        seed=seed,
        output_dir=output_dir,
        deepspeed=deepspeed,
        **callbacks,
    )
