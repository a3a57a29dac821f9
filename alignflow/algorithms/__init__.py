"""Alignment algorithms, chosen by `policy.algorithm`: PPO on our engine (alignflow.rl), offline
preference optimisation on the pairs (dpo, kto, orpo), online RL with our rewards (rloo, grpo), and
rejection-sampling fine-tuning (rft). Each trains from the SFT model and saves the policy and its
tokenizer to `work / POLICY_DIR` (alignflow.stages).

Heavy imports (torch, transformers, trl) happen inside the algorithm modules, loaded on dispatch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alignflow.config import PipelineConfig


# algorithm -> "module:function" inside this package, each `(cfg, inputs, work) -> metrics`.
TRAINERS = {
    "dpo": "preference:train_dpo",
    "kto": "preference:train_kto",
    "orpo": "preference:train_orpo",
    "rloo": "online:train_rloo",
    "grpo": "online:train_grpo",
    "rft": "rft:train_rft",
    "ppo": "ppo:train_ppo",
}


@dataclass
class PolicyInputs:
    """What the upstream stages hand an algorithm, as paths and rows (never live models)."""

    sft_dir: str  # SFT model (or the base model as it ships) + tokenizer: start and reference
    reward_dirs: list[str] = field(default_factory=list)  # one-output sequence-classification heads
    # Preference pairs, collected and/or your own (stages.upstream.preference_rows), with `split`
    pairs: list[dict] = field(default_factory=list)
    # Your own KTO-style rows {prompt, completion, label, split} (KTO alone reads them)
    unpaired: list[dict] = field(default_factory=list)
    rl_prompts: list[dict] = field(default_factory=list)  # prepare's rl_prompts.jsonl rows


def train(cfg: PipelineConfig, inputs: PolicyInputs, work: Path) -> dict[str, float]:
    """Train the policy `cfg.policy.algorithm` names into `work / POLICY_DIR`; returns summary
    metrics. Per-step metrics go to the active MLflow run, so call it inside
    `tracking.stage_run` (as `pipeline.run_stage` does). A crashed run called again with the same
    `work` resumes from its last checkpoint."""
    algorithm = cfg.policy.algorithm
    if algorithm not in TRAINERS:
        raise ValueError(
            f"policy.algorithm '{algorithm}' is not trained by alignflow.algorithms; "
            f"choose one of {', '.join(TRAINERS)}"
        )
    module_name, _, function = TRAINERS[algorithm].partition(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, function)(cfg, inputs, Path(work))
