"""PPO, `policy.algorithm: ppo`: our engine (alignflow.rl) against this run's rewards, KL-anchored
to the frozen SFT policy (TRL has no PPO)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from alignflow import distributed, tracking
from alignflow.algorithms import PolicyInputs
from alignflow.config import PipelineConfig
from alignflow.health import check_finite_weights
from alignflow.launch import DEEPSPEED_ENV
from alignflow.stages import ADAPTER_DIR, CURVES_CHART, POLICY_DIR


def ppo_models(cfg: PipelineConfig, sft_dir: str, rm_dir: str, tokenizer, device: str):
    """(policy, reference, value model): four full models, or one shared base with LoRA."""
    from alignflow.models import load_causal_lm, load_scalar_head_model

    trust, pad = cfg.model.trust_remote_code, tokenizer.pad_token_id
    if cfg.policy.ppo.lora is None:
        return (
            load_causal_lm(sft_dir, trust, device, tokenizer=tokenizer),
            load_causal_lm(sft_dir, trust, device, tokenizer=tokenizer),
            # The critic starts from the reward model: it already reads this task's features.
            load_scalar_head_model(rm_dir, trust, pad, device),
        )
    from alignflow.rl.lora import lora_policy, lora_value_model

    seed = cfg.run.seed
    policy, reference = lora_policy(sft_dir, cfg.policy.ppo, trust, device, seed)
    return policy, reference, lora_value_model(rm_dir, cfg.policy.ppo, trust, pad, device, seed)


def _window_mean(history: list[dict], key: str, first: bool, width: int = 5) -> float:
    window = history[:width] if first else history[-width:]
    return sum(entry[key] for entry in window) / len(window)


def train_ppo(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict:
    """PPO from the SFT model against this run's rewards into `work / POLICY_DIR`; returns the
    stage's summary metrics (per-update metrics go to the active MLflow run)."""
    import torch

    from alignflow.models import default_device, load_tokenizer
    from alignflow.rl.lora import merge_adapter
    from alignflow.rl.rewards import load_rewarder
    from alignflow.rl.trainer import CHECKPOINT_DIR, PPOTrainer

    torch.manual_seed(cfg.run.seed)
    trust = cfg.model.trust_remote_code
    sft_dir, reward_dirs = inputs.sft_dir, inputs.reward_dirs
    # The critic starts from the reward model (it already reads this task's features); with rule
    # rewards only, from the policy's own start with a fresh head.
    rm_dir = reward_dirs[0] if reward_dirs else sft_dir
    tokenizer = load_tokenizer(sft_dir, trust)
    launched = distributed.world_size() > 1
    device = str(distributed.device()) if launched else default_device()
    policy, reference, value_model = ppo_models(cfg, sft_dir, rm_dir, tokenizer, device)
    trainer = PPOTrainer(
        cfg.policy.ppo,
        policy=policy,
        reference=reference,
        reward_model=load_rewarder(cfg, reward_dirs, tokenizer, device),
        value_model=value_model,
        tokenizer=tokenizer,
        prompts=inputs.rl_prompts,
        seed=cfg.run.seed,
        output_dir=work,
        log_metrics=lambda metrics, step: tracking.log_metrics(metrics, step=step),
        log_samples=lambda rows, step: tracking.log_table(rows, f"samples/update-{step:06d}.json"),
        deepspeed=os.environ.get(DEEPSPEED_ENV),  # set by `alignflow launch ... --deepspeed`
    )
    history = trainer.train()
    if distributed.is_main() and history:
        from alignflow import charts

        figure = charts.training_curves(history)
        tracking.log_figure(figure, CURVES_CHART)
        charts.save(figure, work / CURVES_CHART)
    saved = work / (POLICY_DIR if cfg.policy.ppo.lora is None else ADAPTER_DIR)
    trainer.save_policy(saved)
    if distributed.is_main():
        check_finite_weights(saved, "ppo", "policy.ppo.learning_rate")
        if cfg.policy.ppo.lora is not None:
            merge_adapter(sft_dir, work / ADAPTER_DIR, work / POLICY_DIR, trust)
        tokenizer.save_pretrained(work / POLICY_DIR)
        shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    return {
        "processes": trainer.world,
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
