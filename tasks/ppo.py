"""Stage 5: PPO against the reward model, KL-anchored to the frozen SFT policy (alignflow.rl)."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline, tracking
from alignflow.config import PipelineConfig
from alignflow.store import StageResult, read_jsonl
from alignflow.tracking import TrackingContext
from tasks.sft import MODEL_DIR

POLICY_DIR = "policy"


def _window_mean(history: list[dict], key: str, first: bool, width: int = 5) -> float:
    window = history[:width] if first else history[-width:]
    return sum(entry[key] for entry in window) / len(window)


def run_ppo(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    sft: StageResult,
    reward: StageResult,
) -> StageResult:
    def body(work: Path) -> dict:
        import torch

        from alignflow.models import (
            default_device,
            load_causal_lm,
            load_scalar_head_model,
            load_tokenizer,
        )
        from alignflow.rl.rewards import load_rewarder
        from alignflow.rl.trainer import CHECKPOINT_DIR, PPOTrainer
        from tasks.reward import reward_model_dirs

        torch.manual_seed(cfg.run.seed)
        trust = cfg.model.trust_remote_code
        sft_dir, rm_dir = str(sft.path(MODEL_DIR)), str(reward.path(MODEL_DIR))
        tokenizer = load_tokenizer(sft_dir, trust)
        pad, device = tokenizer.pad_token_id, default_device()
        trainer = PPOTrainer(
            cfg.ppo,
            policy=load_causal_lm(sft_dir, trust, device),
            reference=load_causal_lm(sft_dir, trust, device),
            reward_model=load_rewarder(cfg, reward_model_dirs(reward), tokenizer, device),
            # The critic starts from the reward model: it already reads this task's features.
            value_model=load_scalar_head_model(rm_dir, trust, pad, device),
            tokenizer=tokenizer,
            prompts=read_jsonl(prepared.path("rl_prompts.jsonl")),
            seed=cfg.run.seed,
            output_dir=work,
            log_metrics=lambda metrics, step: tracking.log_metrics(metrics, step=step),
            log_samples=lambda rows, step: tracking.log_table(
                rows, f"samples/update-{step:06d}.json"
            ),
        )
        history = trainer.train()
        trainer.policy.save_pretrained(work / POLICY_DIR)
        tokenizer.save_pretrained(work / POLICY_DIR)
        shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
        return {
            "updates": len(history),
            # Set when a killed run was picked up from its checkpoint (-1: ran from the start).
            "resumed_from_update": -1 if trainer.resumed_from is None else trainer.resumed_from,
            "reward_first": _window_mean(history, "reward", first=True),
            "reward_last": _window_mean(history, "reward", first=False),
            "kl_last": _window_mean(history, "kl", first=False),
            "stopped_early": int(trainer.stopped_early is not None),
            "generation_seconds": sum(entry["generation_seconds"] for entry in history),
            "training_seconds": sum(entry["training_seconds"] for entry in history),
        }

    return pipeline.run_stage(cfg, ctx, "ppo", body)


@task(name="ppo", cache_policy=NO_CACHE)
def ppo_task(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    sft: StageResult,
    reward: StageResult,
) -> StageResult:
    return run_ppo(cfg, ctx, prepared, sft, reward)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("ppo", run_ppo))
