"""Stage 5: the aligned policy from the SFT model, by `policy.algorithm`: PPO (our engine,
tasks/ppo.py) or DPO, KTO, ORPO, RLOO, GRPO, rejection sampling (alignflow.algorithms)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.algorithms import POLICY_DIR
from alignflow.config import PipelineConfig
from alignflow.store import StageResult, read_jsonl
from alignflow.tracking import TrackingContext
from tasks._compute import run_stage_where_configured
from tasks.collect import PAIRS_FILE
from tasks.sft import MODEL_DIR

__all__ = ["POLICY_DIR", "policy_task", "run_policy"]


def run_policy(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    sft: StageResult,
    collected: StageResult,
    reward: StageResult,
) -> StageResult:
    def body(work: Path) -> dict:
        if cfg.policy.algorithm == "ppo":
            from tasks.ppo import train_ppo

            return train_ppo(cfg, prepared, sft, reward, work)
        from alignflow.algorithms import PolicyInputs, train
        from tasks.reward import reward_model_dirs

        inputs = PolicyInputs(
            sft_dir=str(sft.path(MODEL_DIR)),
            reward_dirs=reward_model_dirs(reward),
            pairs=read_jsonl(collected.path(PAIRS_FILE)),
            rl_prompts=read_jsonl(prepared.path("rl_prompts.jsonl")),
        )
        return train(cfg, inputs, work)

    return pipeline.run_stage(cfg, ctx, "policy", body)


@task(name="policy", cache_policy=NO_CACHE)
def policy_task(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    sft: StageResult,
    collected: StageResult,
    reward: StageResult,
) -> StageResult:
    return run_stage_where_configured(
        cfg, ctx, "policy", run_policy, prepared, sft, collected, reward
    )


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("policy", run_policy))
