"""Stage 5: the aligned policy from the SFT model, by `policy.algorithm`: PPO (our engine,
tasks/ppo.py) or DPO, KTO, ORPO, RLOO, GRPO, rejection sampling (alignflow.algorithms)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.algorithms import POLICY_DIR
from alignflow.config import PipelineConfig
from alignflow.shape import PAIR_ALGORITHMS, require
from alignflow.store import StageResult, read_jsonl
from alignflow.tracking import TrackingContext
from tasks._compute import run_stage_where_configured
from tasks._inputs import origin_counts, preference_rows, reward_model_dirs, start_model

__all__ = ["POLICY_DIR", "policy_task", "run_policy"]


def run_policy(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    sft: StageResult | None,
    collected: StageResult | None,
    reward: StageResult | None,
) -> StageResult:
    def body(work: Path) -> dict:
        if cfg.policy.algorithm == "ppo":
            from tasks.ppo import train_ppo

            return train_ppo(cfg, prepared, sft, reward, work)
        from alignflow.algorithms import PolicyInputs, train

        rows, counts = [], {}
        if cfg.policy.algorithm in PAIR_ALGORITHMS:
            rows = preference_rows(cfg, prepared, collected)
            read = rows if cfg.policy.algorithm == "kto" else [r for r in rows if "chosen" in r]
            counts = origin_counts(read)  # KTO also learns from unpaired rows; DPO/ORPO do not
            trained = sum(row["split"] == "train" for row in read)
            stage = f"policy ({cfg.policy.algorithm})"
            require(cfg.data.min_examples, trained, "training rows", stage, len(rows) - len(read))
        rl_prompts = prepared.path("rl_prompts.jsonl")
        inputs = PolicyInputs(
            sft_dir=start_model(cfg, prepared, sft),
            reward_dirs=reward_model_dirs(cfg, reward),
            pairs=[row for row in rows if "chosen" in row],
            unpaired=[row for row in rows if "chosen" not in row],
            rl_prompts=read_jsonl(rl_prompts) if rl_prompts.exists() else [],
        )
        return {**train(cfg, inputs, work), **counts}

    return pipeline.run_stage(cfg, ctx, "policy", body)


@task(name="policy", cache_policy=NO_CACHE)
def policy_task(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    sft: StageResult | None,
    collected: StageResult | None,
    reward: StageResult | None,
) -> StageResult:
    return run_stage_where_configured(
        cfg, ctx, "policy", run_policy, prepared, sft, collected, reward
    )


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("policy", run_policy))
