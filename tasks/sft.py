"""The SFT stage as a Prefect task (alignflow.stages.sft does the work)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import sft
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks._compute import run_stage_where_configured


def run_sft(cfg: PipelineConfig, ctx: TrackingContext, prepare: StageResult) -> StageResult:
    return pipeline.run_stage(cfg, ctx, "sft", lambda work: sft.run(cfg, work, prepare))


@task(name="sft", cache_policy=NO_CACHE)
def sft_task(cfg: PipelineConfig, ctx: TrackingContext, prepare: StageResult) -> StageResult:
    return run_stage_where_configured(cfg, ctx, "sft", run_sft, prepare=prepare)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("sft", run_sft))
