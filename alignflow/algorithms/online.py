"""Online RL with our rewards (`rewards` config: reward-model ensemble, rules, length penalty):
RLOO and GRPO from TRL, which sample groups of completions per prompt from the policy and push
it towards the ones that score above their group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alignflow import distributed
from alignflow.algorithms import PolicyInputs
from alignflow.algorithms.common import (
    fit,
    load_sft,
    lora,
    online_training_args,
    save_policy,
    whole_model_loading,
)
from alignflow.algorithms.saving import first_and_last
from alignflow.config import PipelineConfig
from alignflow.models import load_tokenizer


class RewardFunction:
    """A `Rewarder` in TRL's `reward_funcs` calling convention.

    TRL calls it with `prompts` (chat messages), `completions` (conversational: a one-message list
    per completion; plain text otherwise), `completion_ids`, every other dataset column as a list
    (`family=[...]`, ...) and its own helpers (`trainer_state`, `log_extra`, `log_metric`). It returns
    the total reward per completion and logs each component's batch mean through `log_metric`.
    """

    __name__ = "reward"  # TRL names the reward's metrics after this (rewards/reward/mean)

    def __init__(self, rewarder) -> None:
        self.rewarder = rewarder

    def __call__(
        self,
        prompts: list,
        completions: list,
        completion_ids=None,
        trainer_state=None,
        log_extra=None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: list,
    ) -> list[float]:
        # Stripped as alignflow.rl.rollout.decode strips, so both paths score the same text.
        texts = [(c[-1]["content"] if isinstance(c, list) else c).strip() for c in completions]
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        total, components = self.rewarder.score(prompts, texts, rows or None)
        if log_metric is not None:
            for name, values in components.items():
                log_metric(f"reward_components/{name}", values.mean().item())
        return total.tolist()


def _reward_function(cfg: PipelineConfig, inputs: PolicyInputs) -> RewardFunction:
    from alignflow.rl.rewards import load_rewarder

    # A tokenizer of its own: the rewarder sets padding sides as it encodes, and the policy's
    # tokenizer belongs to the trainer.
    tokenizer = load_tokenizer(inputs.sft_dir, cfg.model.trust_remote_code)
    # The trainer never sees the reward models, so ZeRO-3 must not partition them.
    with whole_model_loading():
        rewarder = load_rewarder(cfg, inputs.reward_dirs, tokenizer, str(distributed.device()))
    return RewardFunction(rewarder)


def _prompt_dataset(inputs: PolicyInputs):
    """RL prompt rows as a Dataset: `prompt` plus the columns rule rewards read (family, ...)."""
    from datasets import Dataset

    if not inputs.rl_prompts:
        raise ValueError("policy.algorithm rloo/grpo needs RL prompts (prepare's rl_prompts.jsonl)")
    return Dataset.from_list(inputs.rl_prompts)


def _train_online(trainer, tokenizer, work: Path, algorithm: str, section) -> dict[str, float]:
    losses = fit(trainer, work, section.save_minutes, algorithm)
    save_policy(trainer, tokenizer, work, f"policy.{algorithm}.learning_rate")
    history = trainer.state.log_history
    return {
        "steps": trainer.state.global_step,
        **losses,
        **first_and_last(history, "reward"),
        **first_and_last(history, "kl"),
    }


def train_rloo(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    from trl import RLOOConfig, RLOOTrainer

    section = cfg.policy.rloo
    model, tokenizer = load_sft(cfg, inputs.sft_dir)
    args = RLOOConfig(
        **online_training_args(cfg, section, work),
        normalize_advantages=section.normalize_advantages,
    )
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=_reward_function(cfg, inputs),
        args=args,
        train_dataset=_prompt_dataset(inputs),
        processing_class=tokenizer,
        peft_config=lora(section, model),
    )
    return _train_online(trainer, tokenizer, work, "rloo", section)


def train_grpo(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    from trl import GRPOConfig, GRPOTrainer

    section = cfg.policy.grpo
    model, tokenizer = load_sft(cfg, inputs.sft_dir)
    args = GRPOConfig(
        **online_training_args(cfg, section, work),
        loss_type=section.loss_type,
        scale_rewards=section.scale_rewards,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=_reward_function(cfg, inputs),
        args=args,
        train_dataset=_prompt_dataset(inputs),
        processing_class=tokenizer,
        peft_config=lora(section, model),
    )
    return _train_online(trainer, tokenizer, work, "grpo", section)
