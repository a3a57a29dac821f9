"""Pipeline bookkeeping with no orchestration in it: stage cache keys, running a stage body into
its own directory under a child MLflow run, and the run summary.

The Prefect flow (flows/rlhf.py) only connects stages; this module is what makes each one cached,
resumable and tracked.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from alignflow import distributed, shape, tracking
from alignflow.config import PipelineConfig, dump_config
from alignflow.health import DegenerateModel
from alignflow.stages import STAGES, UPSTREAM
from alignflow.store import (
    SUMMARY_FILE,
    StageDir,
    StageResult,
    cache_key,
    files_digest,
    point_latest,
    write_json_atomic,
)

log = logging.getLogger(__name__)

# MLflow tags on every run of a flow: which flow made it, and its Prefect flow run.
FLOW_TAG = "alignflow.flow"
PREFECT_RUN_TAG = "prefect.flow_run_id"
RUN_ID_TAG = "alignflow.run_id"


def _settings(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The config a stage's output depends on (and nothing else, so unrelated edits keep caches)."""
    dump = cfg.model_dump(mode="json")
    if stage == "prepare":
        # data.min_examples only guards: it never changes what is written
        data = {k: v for k, v in dump["data"].items() if k != "min_examples"}
        settings = {"data": data, "model": dump["model"], "seed": cfg.run.seed}
        if cfg.data.source == "files":  # the files' contents, not just their names
            from alignflow.data.prepare import fingerprint

            settings["sources"] = {
                role: [fingerprint(spec) for spec in getattr(cfg.data, role)]
                for role in shape.DATA_ROLES
            }
        if cfg.data.preferences:  # own pairs are split train/eval here
            settings["pair_eval_fraction"] = cfg.reward_model.eval_fraction
        return settings
    # What a stage reads that no upstream key covers: a given reward model, the pairs' origin.
    if stage == "evaluate":  # the reward model scores the samples (evaluate.sampling: its own)
        return {"evaluate": dump["evaluate"], "reward_model": cfg.reward_model.model}
    if stage == "register":
        return {"registry": dump["registry"], "tracking": tracking_uri(cfg)}
    if stage == "policy":
        algorithm = cfg.policy.algorithm
        settings = {"algorithm": algorithm, "seed": cfg.run.seed}
        settings[algorithm] = dump["policy"][algorithm]
        if algorithm in shape.REWARD_DRIVEN:
            settings["rewards"] = dump["rewards"]
            settings["reward_model"] = cfg.reward_model.model
        else:  # learns from the pairs: which ones
            settings["pairs"] = shape.collect_mode(cfg)
        return settings
    section = "reward_model" if stage == "reward" else stage  # the reward stage's section
    settings = {stage: dump[section], "seed": cfg.run.seed}
    if stage == "reward":
        settings["pairs"] = shape.collect_mode(cfg)
    if stage == "collect":
        # its pairs are split train/eval with the reward stage's fraction; whether your own pairs
        # join them (mode) is the reward and policy stages' business
        settings["pair_eval_fraction"] = cfg.reward_model.eval_fraction
        settings["collect"] = {k: v for k, v in dump["collect"].items() if k != "mode"}
        if cfg.collect.served and cfg.feedback_store_path:
            from alignflow.serve import served_fingerprint  # new exchanges: a new collect run

            settings["served"] = served_fingerprint(cfg.feedback_store_path)
    return settings


# Where a stage's settings name the user's code or files by path: `package.module:function`
# (rule rewards, labelers, judges, refusal classifiers) and lm-eval task folders.
_FUNCTION_KEYS = ("function", "judge", "classifier")
_FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def user_code(settings: Any) -> dict[str, str]:
    """Digests of what a stage's settings name but the config's text does not hold: the source
    file of each `module:function` they call and the files of each `include_path` folder. They
    join the stage's cache key, so editing your rule or your lm-eval task reruns the stages that
    use it. Whatever cannot be found is left to the stage's own error."""
    found: dict[str, str] = {}

    def walk(value: Any, key: str | None = None) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, name)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        elif isinstance(value, str):
            digest = None
            if key == "include_path":
                digest = files_digest(sorted(Path(value).rglob("*")))
            elif key in _FUNCTION_KEYS and _FUNCTION_REF.match(value):
                digest = files_digest([_module_file(value.partition(":")[0])])
            if digest:
                found[value] = digest

    walk(settings)
    return found


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def stage_keys(cfg: PipelineConfig, until: str | None = None) -> dict[str, str]:
    """The cache key of every stage the config runs (alignflow.shape.active_stages), or of those
    up to `until` (the evaluate stage's asks the MLflow registry for the champion)."""
    keys: dict[str, str] = {}
    for stage in shape.active_stages(cfg):
        if until is not None and until in keys:
            break
        upstream = [keys[name] for name in UPSTREAM[stage] if name in keys]
        settings = _settings(cfg, stage)
        if code := user_code(settings):
            settings["user_code"] = code
        if stage == "evaluate" and cfg.evaluate.champion:
            # the registered champion it evaluates beside the policy (never the policy itself)
            version = tracking.registered_champion(
                tracking_uri(cfg), cfg.registry.model_name, keys.get("policy")
            )
            settings["champion"] = (
                None if version is None else version.tags.get(tracking.WEIGHTS_TAG, version.version)
            )
        keys[stage] = cache_key(stage, settings, upstream)
    return keys


# How a worker (image, compose) is pointed at an MLflow server. Not MLFLOW_TRACKING_URI: MLflow
# itself exports that variable on every set_tracking_uri, so one run's store would leak into the
# next config's in the same process and its children.
TRACKING_URI_ENV = "ALIGNFLOW_TRACKING_URI"


def tracking_uri(cfg: PipelineConfig) -> str:
    """The config's MLflow store, else $ALIGNFLOW_TRACKING_URI, else a SQLite file in the
    artifacts root."""
    return (
        cfg.run.mlflow_tracking_uri
        or os.environ.get(TRACKING_URI_ENV)
        or tracking.default_tracking_uri(cfg.run.artifacts_root)
    )


def tracking_context(cfg: PipelineConfig, tags: dict[str, str]) -> tracking.TrackingContext:
    """The config's MLflow store and experiment (created on first use), without a parent run."""
    uri = tracking_uri(cfg)
    experiment_id = tracking.open_experiment(uri, cfg.run.experiment, cfg.run.artifacts_root)
    return tracking.TrackingContext(tracking_uri=uri, experiment_id=experiment_id, tags=tags)


def stage_dir(cfg: PipelineConfig, stage: str) -> StageDir:
    return StageDir(cfg.run.artifacts_root, stage, stage_keys(cfg, until=stage)[stage])


def run_stage(
    cfg: PipelineConfig,
    ctx: tracking.TrackingContext,
    stage: str,
    body: Callable[[Path], dict[str, Any]],
) -> StageResult:
    """Reuse a completed output, or run `body(work_dir) -> metrics` under a child MLflow run.

    Launched on N processes (launch.py), every rank runs `body` (a Trainer does DDP/DeepSpeed
    itself) in the same work dir, but only rank 0 decides reuse, opens the MLflow run, and commits
    the dir; every rank returns rank 0's result.
    """
    started = time.perf_counter()
    directory = stage_dir(cfg, stage)
    main = distributed.is_main()
    cached = distributed.broadcast_object(
        directory.load() if main and directory.completed() else None
    )
    if cached is not None:
        return cached.model_copy(
            update={"status": "cached", "seconds": time.perf_counter() - started}
        )
    if not main:
        return _follow_stage(body)
    params = tracking.flatten(_settings(cfg, stage))
    ctx = ctx.model_copy(update={"tags": {**ctx.tags, **_launch_tags()}})
    with tracking.stage_run(ctx, stage, params) as run_id:
        work = distributed.broadcast_object(directory.begin())
        try:
            metrics = body(work)
        except DegenerateModel:  # a diverged or useless model: nothing in it worth resuming
            shutil.rmtree(work, ignore_errors=True)
            raise
        except BaseException:
            if not any(work.iterdir()):  # nothing to resume from: leave no trace
                work.rmdir()
            raise
        distributed.barrier()  # every rank is done with the work dir before it is renamed
        result = StageResult(
            stage=stage,
            cache_key=directory.final.name,
            output=str(directory.final),
            mlflow_run_id=run_id,
            metrics=metrics,
            seconds=time.perf_counter() - started,
        )
        directory.commit(result)
    return distributed.broadcast_object(result)


def _launch_tags() -> dict[str, str]:
    """How a launched stage ran (processes, DeepSpeed config), for its MLflow run: not settings,
    so never in a cache key."""
    from alignflow.launch import DEEPSPEED_ENV

    tags = {}
    if distributed.world_size() > 1:
        tags["alignflow.world_size"] = str(distributed.world_size())
    if os.environ.get(DEEPSPEED_ENV):
        tags["alignflow.deepspeed"] = Path(os.environ[DEEPSPEED_ENV]).name
    return tags


def _follow_stage(body: Callable[[Path], dict[str, Any]]) -> StageResult:
    """A rank other than 0: work in rank 0's dir, then wait for it to commit (the mirror of the
    collectives in `run_stage`, in the same order)."""
    work = distributed.broadcast_object(None)
    body(work)
    distributed.barrier()
    return distributed.broadcast_object(None)


class PipelineRun:
    """One pipeline run: its directory, its MLflow parent run, and the summary it writes."""

    def __init__(
        self,
        cfg: PipelineConfig,
        flow_run_id: str | None = None,
        flow: str = "rlhf",
        tags: dict[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        tags = {**(tags or {}), FLOW_TAG: flow}
        if flow_run_id:
            tags[PREFECT_RUN_TAG] = flow_run_id
        ctx = tracking_context(cfg, tags)
        # Runs a killed process left RUNNING end as KILLED (the artifacts root is this run's now).
        tracking.end_abandoned_runs(ctx.tracking_uri, ctx.experiment_id)
        # A suspended flow run starts again from the top: it goes on in the MLflow run it opened.
        earlier = tracking.running_parent(ctx, {PREFECT_RUN_TAG: flow_run_id, FLOW_TAG: flow})
        if flow_run_id and earlier:
            parent, self.run_id = earlier.info.run_id, earlier.data.tags[RUN_ID_TAG]
            tracking.mark_suspended(ctx.tracking_uri, parent, suspended=False)
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            self.run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        self.run_dir = Path(cfg.run.artifacts_root) / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_yaml = dump_config(cfg)
        (self.run_dir / "config.yaml").write_text(config_yaml)
        ctx = ctx.model_copy(update={"tags": {**ctx.tags, RUN_ID_TAG: self.run_id}})
        if not (flow_run_id and earlier):
            params = tracking.flatten(cfg.model_dump(mode="json"))
            name = cfg.run.name if flow == "rlhf" else f"{cfg.run.name}-{flow}"
            parent = tracking.start_parent_run(ctx, name, params, config_yaml)
        self.ctx = ctx.model_copy(update={"parent_run_id": parent})
        self.results: dict[str, StageResult] = {}

    def mlflow_url(self) -> str | None:
        """The parent run's page in the MLflow UI, when the store is an MLflow server."""
        uri = self.ctx.tracking_uri
        if not uri.startswith(("http://", "https://")):
            return None
        return f"{uri.rstrip('/')}/#/experiments/{self.ctx.experiment_id}/runs/{self.ctx.parent_run_id}"

    def describe(self) -> str:
        """Markdown pointing at this run's MLflow parent run (linked when served) and its directory."""
        url = self.mlflow_url()
        run = f"[`{self.ctx.parent_run_id}`]({url})" if url else f"`{self.ctx.parent_run_id}`"
        return (
            f"**alignflow run** `{self.run_id}`\n\n"
            f"- MLflow tracking URI: `{self.ctx.tracking_uri}`\n"
            f"- MLflow experiment `{self.cfg.run.experiment}` (id {self.ctx.experiment_id}), "
            f"parent run {run}\n"
            f"- run directory: `{self.run_dir.resolve()}`\n"
        )

    def stage(self, name: str, call: Callable[..., StageResult], *args: Any) -> StageResult:
        """Run one stage through `call`, remembering its result (or its failure) for the summary."""
        started = time.perf_counter()
        try:
            result = call(*args)
        except BaseException:
            cached = name in STAGES  # the retraining flow's own steps have no stage directory
            self.results[name] = StageResult(
                stage=name,
                cache_key=stage_keys(self.cfg, until=name)[name] if cached else "",
                output=str(stage_dir(self.cfg, name).partial) if cached else "",
                status="failed",
                seconds=time.perf_counter() - started,
            )
            raise
        self.results[name] = result
        log.info("%s: %s in %.1fs", name, result.status, result.seconds)
        return result

    def summary(self) -> dict[str, Any]:
        evaluate = self.results.get("evaluate")
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "mlflow_run_id": self.ctx.parent_run_id,
            "stages": {
                name: {
                    "status": result.status,
                    "seconds": round(result.seconds, 2),
                    "output": result.output,
                    "mlflow_run_id": result.mlflow_run_id,
                }
                for name, result in self.results.items()
            },
            "eval": evaluate.metrics.get("summary", {}) if evaluate else {},
            "registered": {
                key: value
                for key, value in self.results["register"].metrics.items()
                if key != "warnings"
            }
            if "register" in self.results
            else {},
            # What a person should read before trusting the run (data cleaning, registration).
            "warnings": [
                line
                for result in self.results.values()
                for line in result.metrics.get("warnings", [])
            ],
        }

    def suspend(self) -> None:
        """The flow waits for people's labels: its parent run stays RUNNING, marked as waiting,
        so no later run takes it for one a killed process left behind."""
        tracking.mark_suspended(self.ctx.tracking_uri, self.ctx.parent_run_id, suspended=True)

    def _outcome_markdown(self, extra: dict[str, Any]) -> str:
        """What the run's MLflow description shows below its stages: the evaluation table of a
        pipeline run, the decision of a retraining round, nothing before either."""
        evaluate = self.results.get("evaluate")
        if evaluate is not None and evaluate.metrics.get("summary"):
            from alignflow.evaluation import markdown_table

            return markdown_table(evaluate.metrics["summary"])
        decision = extra.get("decision")
        if isinstance(decision, dict) and "decision" in decision:
            from alignflow.promotion import round_line

            return round_line(decision)
        return ""

    def finish(self, failed: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        summary = {**self.summary(), **(extra or {})}
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        point_latest(self.cfg.run.artifacts_root, self.run_dir)
        tracking.log_summary(self.ctx, summary, self._outcome_markdown(extra or {}))
        tracking.end_run(self.ctx, self.ctx.parent_run_id, "FAILED" if failed else "FINISHED")
        return summary
