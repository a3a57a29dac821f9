"""The pipeline's shape: which stages a config runs and which datasets it needs.

Every stage reads only what its shape gives it, so the shape is decided here once, from the config:
- own pairs (`data.preferences`) -> reward model -> PPO/RLOO/GRPO, or DPO/KTO/ORPO straight from them;
- `sft.enabled: false`: an instruct model as it ships is the policy's start and its reference;
- `rewards.model_weight: 0`: rule rewards only, no reward model trained;
- `reward_model.model`: an existing reward model instead of training one;
- `collect.mode`: sampled-and-labelled pairs, your own, or both.

At module level it imports only the stage graph (alignflow.stages): the config imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignflow.stages import STAGES

if TYPE_CHECKING:
    from alignflow.config import PipelineConfig

# The datasets a `files` config may list (the demo writes them all itself).
DATA_ROLES = ("sft", "preferences", "preference_prompts", "rl_prompts", "heldout")
# Algorithms that learn from preference pairs (or KTO's unpaired rows) without a reward model.
PAIR_ALGORITHMS = ("dpo", "kto", "orpo")
# Algorithms that maximise `rewards` (a reward model and/or rule rewards).
REWARD_DRIVEN = ("ppo", "rloo", "grpo", "rft")


class NotEnoughData(ValueError):
    """Too few examples for a stage to learn anything: one line naming the setting."""


def require(min_examples: int, count: int, what: str, stage: str, unpaired: int = 0) -> None:
    """Stop `stage` when it has fewer than `data.min_examples` of `what` to train on; `unpaired`:
    KTO-style rows it cannot read, named in the message."""
    if count < min_examples:
        aside = (
            f" ({unpaired} KTO-style unpaired rows of data.preferences are read by "
            "policy.algorithm kto alone)"
            if unpaired
            else ""
        )
        raise NotEnoughData(
            f"{stage}: {count} {what} to train on{aside}, fewer than data.min_examples "
            f"({min_examples}): bring more data, or lower data.min_examples"
        )


def collect_mode(cfg: PipelineConfig) -> str:
    """ "on", "off" or "both": where preference pairs come from (collect.mode, or its default)."""
    if cfg.collect.mode is not None:
        return cfg.collect.mode
    return "off" if cfg.data.preferences else "on"


def reward_model_needed(cfg: PipelineConfig) -> bool:
    """Whether anything reads a reward model: the policy's rewards, or the evaluation's or the
    retraining rounds' judge."""
    maximised = cfg.policy.algorithm in REWARD_DRIVEN and cfg.rewards.model_weight > 0
    judged = "reward_model" in (cfg.evaluate.judge, cfg.retrain.judge)
    return maximised or judged


def trains_reward_model(cfg: PipelineConfig) -> bool:
    return reward_model_needed(cfg) and cfg.reward_model.model is None


def needs_pairs(cfg: PipelineConfig) -> bool:
    return cfg.policy.algorithm in PAIR_ALGORITHMS or trains_reward_model(cfg)


def uses_own_pairs(cfg: PipelineConfig) -> bool:
    return needs_pairs(cfg) and collect_mode(cfg) in ("off", "both")


def runs_collect(cfg: PipelineConfig) -> bool:
    return needs_pairs(cfg) and collect_mode(cfg) in ("on", "both")


def active_stages(cfg: PipelineConfig) -> tuple[str, ...]:
    """The stages this config runs, in order: exactly what the flow runs and the summary lists."""
    skipped = {
        "sft": not cfg.sft.enabled,
        "collect": not runs_collect(cfg),
        "reward": not trains_reward_model(cfg),
    }
    return tuple(stage for stage in STAGES if not skipped.get(stage, False))


def required_roles(cfg: PipelineConfig) -> dict[str, str]:
    """{data role: the reason this shape reads it} for a `files` config."""
    roles = {}
    if cfg.sft.enabled:
        roles["sft"] = "sft.enabled is true (set it false to start from the model as it ships)"
    if uses_own_pairs(cfg):
        roles["preferences"] = f"collect.mode is '{collect_mode(cfg)}'"
    if runs_collect(cfg):
        roles["preference_prompts"] = (
            "the collect stage samples and labels pairs on them (or bring your own pairs in "
            "data.preferences)"
        )
    if cfg.policy.algorithm in REWARD_DRIVEN:
        roles["rl_prompts"] = f"policy.algorithm {cfg.policy.algorithm} samples on them"
    roles["heldout"] = "the evaluate stage scores every policy on it"
    return roles


def check(cfg: PipelineConfig) -> None:
    """A ValueError naming the first key this shape needs and lacks."""
    mode = collect_mode(cfg)
    if needs_pairs(cfg) and mode in ("off", "both") and not cfg.data.preferences:
        raise ValueError(
            f"collect.mode '{mode}' trains on your own pairs: list them in data.preferences"
        )
    if cfg.reward_model.model is not None and not reward_model_needed(cfg):
        raise ValueError(
            f"reward_model.model is set, but nothing reads a reward model (policy.algorithm "
            f"{cfg.policy.algorithm}, rewards.model_weight {cfg.rewards.model_weight:g}, "
            f"evaluate.judge {cfg.evaluate.judge}, retrain.judge {cfg.retrain.judge}): remove it"
        )
    if not cfg.sft.enabled and cfg.model.chat_template is not None:
        raise ValueError(
            "model.chat_template is applied by the SFT stage, and sft.enabled is false: use a "
            "model whose own chat template fits, or enable SFT"
        )
    if cfg.data.source != "files":
        return
    for role, why in required_roles(cfg).items():
        if not getattr(cfg.data, role):
            raise ValueError(f"data.{role} is needed (a list of datasets): {why}")
