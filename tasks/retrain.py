"""The retraining flow's own steps as Prefect tasks: the new feedback, the champion as the starting
policy, and the champion-vs-challenger decision (alignflow.retraining does the work)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from alignflow import retraining, tracking
from alignflow.config import PipelineConfig
from alignflow.retraining import Champion, FeedbackBatch
from alignflow.stages import MODEL_DIR, POLICY_DIR, dataset_file
from alignflow.stages.upstream import reward_model_dirs
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext
from tasks._compute import gpu_slots

DECISION_ARTIFACT = "alignflow-retrain"


@task(name="new-feedback", cache_policy=NO_CACHE)
def feedback_task(cfg: PipelineConfig) -> FeedbackBatch:
    return retraining.new_feedback(cfg)


@task(name="champion", cache_policy=NO_CACHE)
def champion_task(round_cfg: PipelineConfig, champion: Champion) -> StageResult:
    return retraining.champion_stage(round_cfg, champion)


@task(name="feedback-pairs", cache_policy=NO_CACHE)
def feedback_pairs_task(round_cfg: PipelineConfig, feedback: FeedbackBatch) -> StageResult:
    return retraining.feedback_stage(round_cfg, feedback)


@task(name="decide", cache_policy=NO_CACHE)
def decide_task(
    round_cfg: PipelineConfig,
    ctx: TrackingContext,
    prepared: StageResult,
    champion: StageResult,
    reward: StageResult | None,
    policy: StageResult,
) -> dict:
    """Compare, register the challenger, move the alias when it wins; evidence to MLflow (a child
    run `decide`) and to the Prefect UI (a markdown and a table artifact)."""
    work = Path(round_cfg.run.artifacts_root) / "decide"
    work.mkdir(parents=True, exist_ok=True)
    challenger_dir = policy.path(POLICY_DIR)
    params = tracking.flatten({"retrain": round_cfg.retrain.model_dump(mode="json")})
    with gpu_slots(round_cfg, "decide"), tracking.stage_run(ctx, "decide", params):
        decision, rows = retraining.compare(
            round_cfg,
            prepared.path(dataset_file("heldout")),
            str(champion.path(MODEL_DIR)),
            str(challenger_dir),
            next(iter(reward_model_dirs(round_cfg, reward)), None),
        )
        tracking.log_metrics(
            {key: value for key, value in decision.model_dump().items() if key != "promote"}
            | {"promote": float(decision.promote)}
        )
        tracking.log_table(rows, "heldout_comparison.json")
        result = retraining.apply_decision(round_cfg, decision, challenger_dir, work)
    name = round_cfg.registry.model_name
    create_markdown_artifact(
        key=DECISION_ARTIFACT,
        markdown=decision.markdown(
            f"{name} v{result['version']}", f"{name} v{champion.metrics['champion_version']}"
        ),
        description="champion vs challenger",
    )
    create_table_artifact(
        key=f"{DECISION_ARTIFACT}-prompts",
        table=rows,
        description="held-out prompts, first samples",
    )
    return result
