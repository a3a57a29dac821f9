"""`python -m tasks.<stage> CONFIG.yaml [--deepspeed DS.json] [section.key=value ...]`: run one
stage outside Prefect.

This is how a launcher (torchrun, accelerate; alignflow/launch.py) starts a stage on N devices.
Upstream outputs are found by their cache keys, so they must already be complete, and handed to
the stage under their stage's name (alignflow.stages.UPSTREAM). Under N processes every rank runs
the stage; rank 0 alone prints the result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from alignflow import distributed
from alignflow.config import ConfigError, load_config
from alignflow.data.errors import DataError
from alignflow.launch import DEEPSPEED_ENV, RESULT_FILE_ENV, TRACKING_ENV
from alignflow.pipeline import stage_dir, tracking_context
from alignflow.shape import NotEnoughData, active_stages
from alignflow.stages import UPSTREAM
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext

USAGE = "usage: python -m tasks.{stage} CONFIG.yaml [--deepspeed DS.json] [section.key=value ...]"


def _take_deepspeed(args: list[str]) -> list[str]:
    """Remove `--deepspeed PATH` from `args` into the environment, where the Trainer finds it."""
    if "--deepspeed" not in args:
        return args
    at = args.index("--deepspeed")
    if at + 1 >= len(args):
        raise ConfigError(
            "--deepspeed needs a DeepSpeed config path, e.g. infra/deepspeed/zero2.json"
        )
    os.environ[DEEPSPEED_ENV] = os.path.abspath(args[at + 1])
    return args[:at] + args[at + 2 :]


def _tracking(cfg) -> TrackingContext:
    """The pipeline's context when a Prefect task launched this stage (its MLflow run becomes a
    child of the pipeline's run), else a context of its own."""
    if os.environ.get(TRACKING_ENV):
        return TrackingContext.model_validate_json(os.environ[TRACKING_ENV])
    return tracking_context(cfg, tags={"alignflow.launch": "standalone"})


def main(stage: str, run: Callable[..., StageResult], argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(USAGE.format(stage=stage), file=sys.stderr)
        return 2
    try:
        args = _take_deepspeed(args)
        cfg = load_config(args[0], args[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    upstream: dict[str, StageResult | None] = {}
    stages = active_stages(cfg)
    if stage not in stages:
        print(f"error: this config runs no '{stage}' stage (it runs {', '.join(stages)})",
              file=sys.stderr)  # fmt: skip
        return 2
    for name in UPSTREAM[stage]:
        if name not in stages:  # skipped by this config's shape: the stage is handed None
            upstream[name] = None
            continue
        directory = stage_dir(cfg, name)
        if not directory.completed():
            print(f"error: {stage} needs a completed '{name}' stage at {directory.final}; "
                  f"run the pipeline (alignflow run {args[0]}) or that stage first", file=sys.stderr)  # fmt: skip
            return 2
        upstream[name] = directory.load()
    # Rank 0 alone opens the MLflow store: N processes creating one SQLite schema would collide.
    distributed.init_process_group_from_env()
    ctx = distributed.broadcast_object(_tracking(cfg) if distributed.is_main() else None)
    try:
        result = run(cfg, ctx, **upstream)
    except (DataError, NotEnoughData) as error:  # bad or too little data: one line
        print(f"error: {error}", file=sys.stderr)
        return 2
    if distributed.is_main():
        print(result.model_dump_json(indent=2))
        if os.environ.get(RESULT_FILE_ENV):  # for alignflow.launch.run
            Path(os.environ[RESULT_FILE_ENV]).write_text(result.model_dump_json())
    distributed.shutdown()
    return 0
