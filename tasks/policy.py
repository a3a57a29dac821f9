"""The policy stage as a Prefect task (alignflow.stages.policy does the work); its training curves
become a Prefect artifact."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline
from alignflow.config import PipelineConfig
from alignflow.stages import CURVES_CHART, policy
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks._charts import chart_artifact
from tasks._compute import run_stage_where_configured


def run_policy(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepare: StageResult,
    sft: StageResult | None,
    collect: StageResult | None,
    reward: StageResult | None,
) -> StageResult:
    return pipeline.run_stage(
        cfg, ctx, "policy", lambda work: policy.run(cfg, work, prepare, sft, collect, reward)
    )


@task(name="policy", cache_policy=NO_CACHE)
def policy_task(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    prepare: StageResult,
    sft: StageResult | None,
    collect: StageResult | None,
    reward: StageResult | None,
) -> StageResult:
    result = run_stage_where_configured(
        cfg, ctx, "policy", run_policy, prepare=prepare, sft=sft, collect=collect, reward=reward
    )
    chart_artifact(result.path(CURVES_CHART), "alignflow-policy-curves", "policy training curves")
    return result


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("policy", run_policy))
