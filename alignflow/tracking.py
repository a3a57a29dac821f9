"""How the pipeline talks to MLflow: parent/child runs, metrics, artifacts, the model registry.
(compare, export and retraining read the store directly for their own queries.)

One parent run per pipeline run and one nested child run per stage. Runs are addressed by id, never
by MLflow's thread-local "active run", so stages can run in any worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignflow import distributed

log = logging.getLogger(__name__)

# MLflow caps a param value's length; longer ones are cut rather than failing the run.
_MAX_PARAM_CHARS = 500
_SECRET_HINTS = ("key", "token", "secret", "password")


class TrackingContext(BaseModel):
    """What a stage needs to log under its pipeline's parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None
    tags: dict[str, str] = {}


def default_tracking_uri(artifacts_root: str | Path) -> str:
    root = Path(artifacts_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


# Which process a run belongs to ("host:pid"): a run still RUNNING whose process is gone was
# killed (kill -9, a lost machine) and is ended as KILLED by the next run (`end_abandoned_runs`).
PROCESS_TAG = "alignflow.process"
# Set on a parent run while its flow is suspended for people's labels: it stays RUNNING on purpose.
SUSPENDED_TAG = "alignflow.suspended"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def end_abandoned_runs(tracking_uri: str, experiment_id: str) -> list[str]:
    """End as KILLED the experiment's RUNNING runs whose process on this machine is gone (a
    suspended parent excepted); returns their ids. Runs of other machines are left alone."""
    client = _client(tracking_uri)
    host = socket.gethostname()
    ended = []
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        tags = run.data.tags
        owner_host, _, pid = tags.get(PROCESS_TAG, "").rpartition(":")
        if owner_host != host or not pid.isdigit() or tags.get(SUSPENDED_TAG) == "true":
            continue
        if int(pid) != os.getpid() and not _process_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.info("ended %d MLflow run(s) left RUNNING by a killed process as KILLED", len(ended))
    return ended


def mark_suspended(tracking_uri: str, run_id: str, suspended: bool) -> None:
    """Tag a parent run as suspended (waiting for people) or, resumed, as this process's again."""
    client = _client(tracking_uri)
    client.set_tag(run_id, SUSPENDED_TAG, "true" if suspended else "false")
    if not suspended:
        client.set_tag(run_id, PROCESS_TAG, this_process())


def _client(uri: str):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def open_experiment(tracking_uri: str, name: str, artifacts_root: str | Path) -> str:
    """Get or create the experiment; artifacts go next to the runs for a local store."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = (Path(artifacts_root).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as strings, with anything that looks like a secret left out."""
    return {
        key: str(value)[:_MAX_PARAM_CHARS]
        for key, value in params.items()
        if not any(hint in key.lower().rsplit(".", 1)[-1] for hint in _SECRET_HINTS)
    }


def start_parent_run(
    ctx: TrackingContext, run_name: str, params: dict[str, Any], config_yaml: str
) -> str:
    client = _client(ctx.tracking_uri)
    tags = {**ctx.tags, PROCESS_TAG: this_process()}
    run = client.create_run(ctx.experiment_id, run_name=run_name, tags=tags)
    _log_params(client, run.info.run_id, params)
    client.log_text(run.info.run_id, config_yaml, "config/resolved.yaml")
    return run.info.run_id


def running_parent(ctx: TrackingContext, tags: dict[str, str | None]):
    """The experiment's running top-level run carrying all `tags`, or None."""
    if not all(tags.values()):
        return None
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = _client(ctx.tracking_uri).search_runs(
        [ctx.experiment_id], filter_string=f"{query} and attributes.status = 'RUNNING'"
    )
    return next((run for run in runs if "mlflow.parentRunId" not in run.data.tags), None)


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in _safe_params(params).items()]
    for start in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=items[start : start + 100])


def end_run(ctx: TrackingContext, run_id: str, status: str = "FINISHED") -> None:
    _client(ctx.tracking_uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def stage_run(ctx: TrackingContext, stage: str, params: dict[str, Any]) -> Iterator[str]:
    """A child run of the pipeline's parent run, active in this thread while the stage works."""
    import mlflow

    client = _client(ctx.tracking_uri)
    tags = dict(ctx.tags, stage=stage, **{PROCESS_TAG: this_process()})
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    run = client.create_run(ctx.experiment_id, run_name=stage, tags=tags)
    _log_params(client, run.info.run_id, params)
    # The HF Trainer's own MLflow callback reads these; ours logs explicitly, so keep it off.
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    with mlflow.start_run(run_id=run.info.run_id, nested=True) as active:
        try:
            yield active.info.run_id
        except Exception:
            raise
        except BaseException:  # a suspended flow run (Prefect's Pause), an interrupt: not a failure
            mlflow.end_run("KILLED")
            raise
        finally:
            mlflow.flush_async_logging()


def _main_rank_only(write: Callable[..., None]) -> Callable[..., None]:
    """Under N processes only rank 0 has the stage's run; elsewhere MLflow would start a new one."""

    @functools.wraps(write)
    def logged(*args: Any, **kwargs: Any) -> None:
        if distributed.is_main():
            write(*args, **kwargs)

    return logged


@_main_rank_only
def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log finite numeric values to the active stage run."""
    import mlflow

    numeric = {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }
    if numeric:
        # Asynchronous: a SQLite store takes a noticeable fraction of a second per call.
        mlflow.log_metrics(numeric, step=step, synchronous=False)


@_main_rank_only
def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


@_main_rank_only
def log_dict(data: dict, artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(data, artifact_file)


@_main_rank_only
def log_figure(figure, artifact_file: str) -> None:
    """A matplotlib figure as a PNG artifact of the active run (shown in the MLflow UI)."""
    import mlflow

    mlflow.log_figure(figure, artifact_file)


def log_trainer_curves(
    trainer, title: str, artifact_file: str, save_to: Path | None = None
) -> None:
    """A transformers Trainer's logged steps as curves (alignflow.charts), from rank 0; also saved
    as the PNG `save_to` when given."""
    if trainer.is_world_process_zero() and trainer.state.log_history:
        from alignflow import charts

        figure = charts.trainer_curves(trainer.state.log_history, title)
        log_figure(figure, artifact_file)
        if save_to is not None:
            charts.save(figure, save_to)


@_main_rank_only
def log_table(rows: list[dict], artifact_file: str) -> None:
    import mlflow

    if rows:
        mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]}, artifact_file)


def trainer_callback():
    """A transformers TrainerCallback logging the Trainer's logs to the active stage run."""
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log_metrics(logs, step=state.global_step)

    return MlflowMetrics()


WEIGHTS_TAG = "alignflow.content_sha256"
# On a registered version: the cache key of the policy stage that trained it.
POLICY_KEY_TAG = "alignflow.policy_key"


def registered_champion(tracking_uri: str, model_name: str, policy_key: str | None = None):
    """The MLflow ModelVersion `model_name@champion` in the store, unless it is the policy that
    the policy stage of cache key `policy_key` trained; None when there is none, or the store
    does not exist (a SQLite file not yet written: it is not created here) or cannot be read."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).is_file():
        return None
    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(model_name, "champion")
    except MlflowException:
        return None
    if policy_key is not None and version.tags.get(POLICY_KEY_TAG) == policy_key:
        return None
    return version


def content_digest(model_dir: Path) -> str:
    """sha256 over every file of a model folder (weights, config, tokenizer), by relative path:
    the same trained policy gives the same digest, whatever run or setting produced it."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _model_card(text: str, license_id: str | None):
    """A Hugging Face model card: `text`, and the license in its metadata when known."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(license=license_id, library_name="transformers")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text or 'An alignflow policy.'}\n")


def register_policy(
    model_dir: Path,
    model_name: str,
    pip_requirements: list[str],
    description: str = "",
    tags: dict[str, str] | None = None,
    license_id: str | None = None,
) -> dict:
    """Log the policy as an MLflow transformers model and register it, once per content.

    The version gets `description` (markdown: the evaluation that earned it) and `tags` (its
    figures), set again on a rerun that finds it. The logged model's card carries the description
    and `license_id` (the base model's license; None when unknown: MLflow then says to check it),
    so MLflow does not look for a card on the hub.

    The version carries the folder's content digest: registering the same policy again (a rerun
    after a kill, a run that changed only an evaluation setting) finds that version instead of
    adding a copy. The version becomes `champion` when the model has none (the first one, or a
    registration killed before its alias was set), else `challenger` until the operations flow
    promotes one; a version that is champion already stays champion.
    """
    import mlflow
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client = MlflowClient()
    digest = content_digest(model_dir)
    known = client.search_model_versions(
        f"name='{model_name}' and tags.`{WEIGHTS_TAG}` = '{digest}'"
    )
    if known:
        version = str(min(int(v.version) for v in known))
        model_uri = f"models:/{model_name}/{version}"
        log.info("%s v%s already holds this policy (content %s): not registered again",
                 model_name, version, digest[:12])  # fmt: skip
    else:
        # mlflow 3.17 cannot log a checkpoint *path* under transformers 5: pass the loaded parts.
        components = {
            "model": AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True),
            "tokenizer": AutoTokenizer.from_pretrained(model_dir),
        }
        info = mlflow.transformers.log_model(
            transformers_model=components,
            name="policy",
            task="text-generation",
            pip_requirements=pip_requirements,
            model_card=_model_card(description, license_id),
        )
        # one call creates the version with its digest: no version without it, even if killed
        registered = mlflow.register_model(info.model_uri, model_name, tags={WEIGHTS_TAG: digest})
        version, model_uri = str(registered.version), info.model_uri
    if description:
        client.update_model_version(model_name, version, description=description)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, value)
    aliases = {k: str(v) for k, v in client.get_registered_model(model_name).aliases.items()}
    champion = aliases.get("champion")
    alias = "champion" if champion in (None, version) else "challenger"
    if aliases.get(alias) != version:
        client.set_registered_model_alias(model_name, alias, version)
    return {
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "model_uri": model_uri,
        "reused": bool(known),
    }


@_main_rank_only
def set_tags(tags: dict[str, str]) -> None:
    """Tags on the active stage run."""
    import mlflow

    mlflow.set_tags(tags)


@_main_rank_only
def log_dataset_input(rows: list[dict], name: str, source: str, digest: str) -> None:
    """Log `rows` as an MLflow dataset input of the active run (context "training"), under a
    content digest computed by the caller, so runs trained on the same data share it."""
    import json

    import mlflow
    import pandas as pd

    frame = pd.DataFrame(
        [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
    )
    uri = source if "://" in source else Path(source).resolve().as_uri()
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice (schemes "" and "file"); both match any
        # local file and it warns that the source "can be interpreted in multiple ways" before
        # taking that same class. Only this message, only here.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(frame, source=uri, name=name, digest=digest)
    mlflow.log_input(dataset, context="training")


def download_registered_model(model_name: str, alias: str, dst_path: str | None = None) -> str:
    """A local folder holding the registered model `model_name@alias` as plain transformers files
    (weights, config and tokenizer together), downloaded from the current tracking store (into
    `dst_path` when given). Raises ValueError when there is none."""
    return download_model(f"models:/{model_name}@{alias}", dst_path)


def download_model(model_uri: str, dst_path: str | None = None) -> str:
    """`download_registered_model` for any registry URI (`models:/NAME@ALIAS`,
    `models:/NAME/VERSION`)."""
    import shutil

    import mlflow
    from mlflow.exceptions import MlflowException

    name = model_uri.removeprefix("models:/")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    except MlflowException as error:
        raise ValueError(f"no registered model {name} ({error.message})") from None
    model, tokenizer = Path(local, "model"), Path(local, "components", "tokenizer")
    if not (model / "config.json").is_file():
        raise ValueError(f"registered model {name} holds no transformers model")
    # The transformers flavor keeps the tokenizer apart; loaders expect it beside the weights.
    for item in tokenizer.glob("*") if tokenizer.is_dir() else []:
        shutil.copy2(item, model / item.name)
    return str(model)


def download_model_once(model_uri: str, folder: Path) -> Path:
    """`download_model` into `folder`/model, once: a folder already holding it is reused, and a
    download goes to a partial sibling renamed whole (a killed one is never taken for done).
    Returns the model folder."""
    import shutil

    model = folder / "model"
    if not (model / "config.json").is_file():
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        local = download_model(model_uri, str(partial))
        if Path(local).resolve() != (partial / "model").resolve():  # a relative root too
            raise RuntimeError(f"registered model layout changed: weights at {local}")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return model


def log_summary(ctx: TrackingContext, summary: dict[str, Any], evaluation: str = "") -> None:
    """The run summary on the parent run: eval metrics as metrics, the whole thing as a file, and
    every stage it used linked, the cached ones (whose MLflow runs belong to an earlier parent
    run) included: tags `alignflow.stage.<stage>.run_id`/`.status`, and the run's description
    (a table of the stages with links, then `evaluation`, markdown)."""
    from mlflow.entities import Metric, RunTag

    client = _client(ctx.tracking_uri)
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"eval.{key}", float(value), now, 0)
        for key, value in flatten(summary.get("eval", {})).items()
        if isinstance(value, int | float) and math.isfinite(value)
    ]
    tags, rows = {}, ["| stage | status | seconds | MLflow run |", "|---|---|---|---|"]
    for name, stage in summary.get("stages", {}).items():
        tags[f"alignflow.stage.{name}.status"] = stage["status"]
        run_id = stage.get("mlflow_run_id")
        link = "-"
        if run_id:
            tags[f"alignflow.stage.{name}.run_id"] = run_id
            experiment = _experiment_of(client, run_id) or ctx.experiment_id
            link = f"[{run_id[:12]}](#/experiments/{experiment}/runs/{run_id})"
        rows.append(f"| {name} | {stage['status']} | {stage['seconds']:.1f} | {link} |")
    tags[NOTE_TAG] = "\n".join(rows) + (f"\n\n{evaluation}" if evaluation else "")
    client.log_batch(
        ctx.parent_run_id,
        metrics=metrics,
        tags=[RunTag(key, value[:MAX_TAG_VALUE]) for key, value in tags.items()],
    )
    client.log_dict(ctx.parent_run_id, summary, "summary.json")


NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
MAX_TAG_VALUE = 8000  # MLflow's limit on a tag value


def _experiment_of(client, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).info.experiment_id
    except Exception:  # a run deleted since: the link falls back to this run's experiment
        return None
