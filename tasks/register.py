"""The registration stage as a Prefect task (alignflow.stages.register does the work)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import register
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext


def run_register(
    cfg: PipelineConfig, ctx: TrackingContext, policy: StageResult, evaluate: StageResult
) -> StageResult:
    return pipeline.run_stage(
        cfg, ctx, "register", lambda work: register.run(cfg, work, policy, evaluate)
    )


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    cfg: PipelineConfig, ctx: TrackingContext, policy: StageResult, evaluate: StageResult
) -> StageResult:
    return run_register(cfg, ctx, policy, evaluate)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("register", run_register))
