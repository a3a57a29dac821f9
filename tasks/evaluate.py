"""The evaluation stage as a Prefect task (alignflow.stages.evaluate does the work); its table
and its bar charts become Prefect artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import EVAL_CHART, evaluate
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks._charts import chart_artifact
from tasks._compute import gpu_slots


def run_evaluate(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepare: StageResult,
    sft: StageResult | None,
    reward: StageResult | None,
    policy: StageResult,
) -> StageResult:
    return pipeline.run_stage(
        cfg, ctx, "evaluate", lambda work: evaluate.run(cfg, work, prepare, sft, reward, policy)
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepare: StageResult,
    sft: StageResult | None,
    reward: StageResult | None,
    policy: StageResult,
) -> StageResult:
    with gpu_slots(cfg, "evaluate"):
        result = run_evaluate(cfg, ctx, prepare, sft, reward, policy)
    create_markdown_artifact(
        key="alignflow-eval", markdown=result.metrics["table"], description="held-out evaluation"
    )
    chart_artifact(result.path(EVAL_CHART), "alignflow-eval-chart", "held-out evaluation (bars)")
    return result


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("evaluate", run_evaluate))
