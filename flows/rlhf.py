"""The full RLHF pipeline as one Prefect flow: prepare -> sft -> collect -> reward -> policy (PPO,
DPO, KTO, ORPO, RLOO, GRPO or rejection sampling) -> evaluate -> register. Each stage is a task;
they hand each other paths, never live objects. Which of sft, collect and reward run follows from
the config (alignflow.shape); a stage that does not run hands on None."""

from __future__ import annotations

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.exceptions import Pause

from alignflow.config import PipelineConfig
from alignflow.pipeline import PipelineRun
from alignflow.shape import active_stages
from alignflow.store import artifacts_lock
from tasks.collect import collect_task
from tasks.evaluate import evaluate_task
from tasks.policy import policy_task
from tasks.prepare import prepare_task
from tasks.register import register_task
from tasks.reward import reward_task
from tasks.sft import sft_task

# Frozen, so one shared default instance is safe; the Prefect UI shows it as the form's defaults.
DEFAULT_CONFIG = PipelineConfig()


def announce(run: PipelineRun) -> None:
    """Link the Prefect flow run to its MLflow run (the MLflow run carries the flow-run id)."""
    create_markdown_artifact(key="alignflow-run", markdown=run.describe(), description="MLflow run")
    if url := run.mlflow_url():
        create_link_artifact(key="alignflow-mlflow", link=url, link_text="MLflow run")


@flow(name="rlhf")
def rlhf(config: PipelineConfig = DEFAULT_CONFIG) -> dict:
    """Run every stage in order (cached stages are reused) and return the run summary."""
    with artifacts_lock(config.run.artifacts_root, f"flow run {runtime.flow_run.id}"):
        return _stages(config)


def _stages(config: PipelineConfig) -> dict:
    run = PipelineRun(config, flow_run_id=runtime.flow_run.id)
    announce(run)
    args, stages = (config, run.ctx), active_stages(config)  # what every stage task takes first
    try:
        prepared = run.stage("prepare", prepare_task, *args)
        sft = run.stage("sft", sft_task, *args, prepared) if "sft" in stages else None
        collected = (
            run.stage("collect", collect_task, *args, prepared, sft)
            if "collect" in stages
            else None
        )
        reward = (
            run.stage("reward", reward_task, *args, prepared, sft, collected)
            if "reward" in stages
            else None
        )
        policy = run.stage("policy", policy_task, *args, prepared, sft, collected, reward)
        evaluated = run.stage("evaluate", evaluate_task, *args, prepared, sft, reward, policy)
        run.stage("register", register_task, *args, policy, evaluated)
    except Pause:  # suspended for people's labels: started again when they answer
        run.suspend()
        raise
    except BaseException:
        run.finish(failed=True)
        raise
    get_run_logger().info("held-out evaluation\n%s", evaluated.metrics["table"])
    return run.finish()
