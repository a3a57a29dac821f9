"""Stage 5: the aligned policy from the SFT model, by `policy.algorithm` (alignflow.algorithms):
PPO, DPO, KTO, ORPO, RLOO, GRPO or rejection sampling, all behind one interface."""

from __future__ import annotations

from pathlib import Path

from alignflow.algorithms import PolicyInputs, train
from alignflow.config import PipelineConfig
from alignflow.shape import PAIR_ALGORITHMS, require
from alignflow.stages import dataset_file
from alignflow.stages.upstream import (
    origin_counts,
    preference_rows,
    reward_model_dirs,
    start_model,
)
from alignflow.store import StageResult, read_jsonl


def run(
    cfg: PipelineConfig,
    work: Path,
    prepare: StageResult,
    sft: StageResult | None,
    collect: StageResult | None,
    reward: StageResult | None,
) -> dict:
    """Train the policy into `work / POLICY_DIR`; returns the stage's metrics."""
    algorithm = cfg.policy.algorithm
    rows, counts = [], {}
    if algorithm in PAIR_ALGORITHMS:
        rows = preference_rows(cfg, prepare, collect)
        read = rows if algorithm == "kto" else [r for r in rows if "chosen" in r]
        counts = origin_counts(read)  # KTO also learns from unpaired rows; DPO/ORPO do not
        trained = sum(row["split"] == "train" for row in read)
        stage = f"policy ({algorithm})"
        require(cfg.data.min_examples, trained, "training rows", stage, len(rows) - len(read))
    rl_prompts = prepare.path(dataset_file("rl_prompts"))
    inputs = PolicyInputs(
        sft_dir=start_model(cfg, prepare, sft),
        reward_dirs=reward_model_dirs(cfg, reward),
        pairs=[row for row in rows if "chosen" in row],
        unpaired=[row for row in rows if "chosen" not in row],
        rl_prompts=read_jsonl(rl_prompts) if rl_prompts.exists() else [],
    )
    return {**train(cfg, inputs, work), **counts}
