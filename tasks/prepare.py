"""The prepare stage as a Prefect task (alignflow.stages.prepare does the work)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import prepare
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext


def run_prepare(cfg: PipelineConfig, ctx: TrackingContext) -> StageResult:
    return pipeline.run_stage(cfg, ctx, "prepare", lambda work: prepare.run(cfg, work))


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(cfg: PipelineConfig, ctx: TrackingContext) -> StageResult:
    return run_prepare(cfg, ctx)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("prepare", run_prepare))
