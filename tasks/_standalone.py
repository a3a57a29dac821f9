"""`python -m tasks.<stage> CONFIG.yaml [section.key=value ...]`: run one stage outside Prefect.

This is how a launcher (torchrun, accelerate, deepspeed) starts a stage on N devices. Upstream
outputs are found by their cache keys, so they must already be complete.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from alignflow.config import ConfigError, load_config
from alignflow.data.errors import DataError
from alignflow.pipeline import UPSTREAM, stage_dir, tracking_context
from alignflow.store import StageResult


def main(stage: str, run: Callable[..., StageResult], argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(
            f"usage: python -m tasks.{stage} CONFIG.yaml [section.key=value ...]", file=sys.stderr
        )
        return 2
    try:
        cfg = load_config(args[0], args[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    upstream = []
    for name in UPSTREAM[stage]:
        directory = stage_dir(cfg, name)
        if not directory.completed():
            print(f"error: {stage} needs a completed '{name}' stage at {directory.final}; "
                  f"run the pipeline (alignflow run {args[0]}) or that stage first", file=sys.stderr)  # fmt: skip
            return 2
        upstream.append(directory.load())
    ctx = tracking_context(cfg, tags={"alignflow.launch": "standalone"})
    try:
        result = run(cfg, ctx, *upstream)
    except DataError as error:  # bad data: one line naming file, line and field
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.model_dump_json(indent=2))
    return 0
