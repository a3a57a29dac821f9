"""The collect stage as a Prefect task (alignflow.stages.collect does the work; people label
through the flow's pause, tasks.label)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import collect
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks._compute import gpu_slots
from tasks.label import label_by_people


def run_collect(
    cfg: PipelineConfig, ctx: TrackingContext, prepare: StageResult, sft: StageResult | None
) -> StageResult:
    return pipeline.run_stage(
        cfg, ctx, "collect", lambda work: collect.run(cfg, work, prepare, sft, label_by_people)
    )


@task(name="collect", cache_policy=NO_CACHE)
def collect_task(
    cfg: PipelineConfig, ctx: TrackingContext, prepare: StageResult, sft: StageResult | None
) -> StageResult:
    with gpu_slots(cfg, "collect"):
        return run_collect(cfg, ctx, prepare, sft)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("collect", run_collect))
