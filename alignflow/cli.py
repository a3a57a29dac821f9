"""`alignflow` command line. Prefect and the ML stack are imported lazily so `--help` is instant."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from alignflow.config import ConfigError, dump_config, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The RLHF loop (data, SFT, preferences, reward model, PPO, evaluation, registry) "
    "as Prefect flows tracked in MLflow.",
)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Path, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as error:
        _fail(str(error).replace("\n", "\nerror: "), 2)


def _quiet_defaults() -> None:
    """Offline-friendly defaults; a user's own environment wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own log lines (stage timings, what data preparation removed) in the console and Prefect UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "alignflow,tasks")
    for name in ("alignflow", "tasks"):  # Prefect adds its handlers to them, not a level
        logging.getLogger(name).setLevel(logging.INFO)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/tiny.yaml.")],
    set_: SetOption = None,
) -> None:
    """Run the whole RLHF pipeline as a Prefect flow; completed stages are reused."""
    cfg = _load(config, set_)
    _quiet_defaults()
    from alignflow.models import check_base_model
    from alignflow.rl.rewards import check_rewards

    try:
        check_base_model(cfg.model)
        check_rewards(cfg)
    except ValueError as error:
        _fail(f"{config}: {error}", 2)
    from alignflow.data.errors import DataError
    from flows.rlhf import rlhf

    try:
        summary = rlhf(config=cfg)
    except DataError as error:  # bad data: the one line that says where, and nothing written
        _fail(str(error), 2)
    except Exception as error:  # a person reads this; the traceback is in the Prefect log above
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _fail(f"{type(error).__name__}: {first_line}", 1)
    run_dir = Path(cfg.run.artifacts_root) / summary["run_id"]
    statuses = ", ".join(f"{k} {v['status']}" for k, v in summary["stages"].items())
    typer.echo(f"stages: {statuses}")
    typer.echo(f"summary: {run_dir / 'summary.json'}")


@app.command("launch")
def launch_stage(
    stage: Annotated[str, typer.Argument(help="The stage to run, e.g. sft or reward.")],
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
    _quiet_defaults()
    from alignflow.feedback.labelers import LabelError
    from tasks.label import answer_in_terminal

    try:
        answer_in_terminal(flow_run_id, lambda text: typer.prompt(text, default=""), typer.echo)
    except LabelError as error:
        _fail(str(error), 2)
    typer.echo(f"resumed flow run {flow_run_id}")


@app.command("show-config")
def show_config(config: Path, set_: SetOption = None) -> None:
    """Print the resolved config (defaults + file + overrides) as YAML."""
    typer.echo(dump_config(_load(config, set_)), nl=False)


@app.command()
def summary(artifacts_root: Path = Path("runs")) -> None:
    """Print the newest run's summary.json."""
    path = artifacts_root / "latest" / "summary.json"
    if not path.exists():
        _fail(f"{path}: no run yet (run `alignflow run CONFIG` first)", 1)
    json.dump(json.loads(path.read_text()), sys.stdout, indent=2)
    typer.echo()


data_app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    path: Annotated[str, typer.Argument(help="A JSON/JSONL/CSV/Parquet file or a glob.")],
    format_: Annotated[
        str | None, typer.Option("--format", help="Skip detection and use this format.")
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


if __name__ == "__main__":
    app()
