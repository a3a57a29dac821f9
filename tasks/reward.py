"""The reward-model stage as a Prefect task (alignflow.stages.reward does the work)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import reward
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks._compute import run_stage_where_configured


def run_reward(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepare: StageResult,
    sft: StageResult | None,
    collect: StageResult | None,
) -> StageResult:
    return pipeline.run_stage(
        cfg, ctx, "reward", lambda work: reward.run(cfg, work, prepare, sft, collect)
    )


@task(name="reward", cache_policy=NO_CACHE)
def reward_task(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepare: StageResult,
    sft: StageResult | None,
    collect: StageResult | None,
) -> StageResult:
    return run_stage_where_configured(
        cfg, ctx, "reward", run_reward, prepare=prepare, sft=sft, collect=collect
    )


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("reward", run_reward))
