"""Continuous alignment, one round per run (scheduled by cron in infra/prefect.yaml): new feedback
since the last round -> refresh the reward model on all feedback -> improve the policy starting from
the champion -> champion vs challenger on the same held-out prompts -> move `champion` only on a
significant win. A round with too little new feedback is skipped."""

from __future__ import annotations

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import Pause

from alignflow import retraining
from alignflow.config import PipelineConfig
from alignflow.pipeline import PipelineRun
from alignflow.shape import active_stages
from alignflow.store import artifacts_lock
from flows.rlhf import announce
from tasks.policy import policy_task
from tasks.prepare import prepare_task
from tasks.retrain import (
    DECISION_ARTIFACT,
    champion_task,
    decide_task,
    feedback_pairs_task,
    feedback_task,
)
from tasks.reward import reward_task

DEFAULT_CONFIG = PipelineConfig()


@flow(name="retrain")
def retrain(config: PipelineConfig = DEFAULT_CONFIG) -> dict:
    """One retraining round; returns what was decided and why."""
    with artifacts_lock(config.run.artifacts_root, f"flow run {runtime.flow_run.id}"):
        return _round(config)


def _round(config: PipelineConfig) -> dict:
    feedback = feedback_task(config)
    if feedback.new_records < config.retrain.min_new_records:
        reason = (
            f"{feedback.new_records} new feedback records since watermark "
            f"{feedback.previous_watermark} (retrain.min_new_records is "
            f"{config.retrain.min_new_records}): round skipped"
        )
        get_run_logger().info(reason)
        create_markdown_artifact(key=DECISION_ARTIFACT, markdown=reason, description="skipped")
        return {"decision": "skipped", "reason": reason, "new_records": feedback.new_records}
    champion = retraining.current_champion(config)
    round_cfg = retraining.round_config(config, champion, feedback)
    tags = {
        retraining.MODEL_TAG: champion.model_name,
        retraining.WATERMARK_TAG: str(feedback.watermark),
        "alignflow.champion_version": champion.version,
    }
    run = PipelineRun(round_cfg, flow_run_id=runtime.flow_run.id, flow="retrain", tags=tags)
    announce(run)
    args = round_cfg, run.ctx  # what every stage task takes first
    try:
        # Held-out and RL prompts: the pipeline's own prepare stage (cached under the main root).
        prepared = run.stage("prepare", prepare_task, config, run.ctx)
        start = run.stage("champion", champion_task, round_cfg, champion)
        pairs = run.stage("feedback", feedback_pairs_task, round_cfg, feedback)
        reward = (  # none with rule rewards only (alignflow.shape)
            run.stage("reward", reward_task, *args, prepared, start, pairs)
            if "reward" in active_stages(round_cfg)
            else None
        )
        policy = run.stage("policy", policy_task, *args, prepared, start, pairs, reward)
        decided = decide_task(*args, prepared, start, reward, policy)
    except Pause:  # suspended for people's labels: started again when they answer
        run.suspend()
        raise
    except BaseException:
        run.finish(failed=True)
        raise
    get_run_logger().info(
        "%s v%s %s", decided["model_name"], decided["version"], decided["decision"]
    )
    evidence = ("gain", "ci_low", "ci_high", "challenger_score", "champion_score", "win_rate")
    held_out = {key: decided[key] for key in evidence} | {"promoted": float(decided["promote"])}
    return run.finish(extra={"decision": decided, "eval": held_out})
