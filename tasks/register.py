"""Stage 7: log the trained policy (whichever `policy.algorithm` trained it) as an MLflow model and
register it under `registry.model_name`."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import pipeline, tracking
from alignflow.config import PipelineConfig
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks.policy import POLICY_DIR

# What serving the logged model needs: pinned to what trained it.
SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate")


def serving_requirements() -> list[str]:
    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def run_register(
    cfg: PipelineConfig, ctx: TrackingContext, policy: StageResult, evaluated: StageResult
) -> StageResult:
    def body(work: Path) -> dict:
        tracking.log_metrics(tracking.flatten(evaluated.metrics["summary"]))
        registered = tracking.register_policy(
            policy.path(POLICY_DIR), cfg.registry.model_name, serving_requirements()
        )
        return registered

    return pipeline.run_stage(cfg, ctx, "register", body)


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    cfg: PipelineConfig, ctx: TrackingContext, policy: StageResult, evaluated: StageResult
) -> StageResult:
    return run_register(cfg, ctx, policy, evaluated)


if __name__ == "__main__":
    from tasks._standalone import main

    raise SystemExit(main("register", run_register))
