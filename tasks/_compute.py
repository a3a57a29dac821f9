"""Where a stage's Prefect task runs it: in the flow's process, or, when `compute.<stage>` asks for
several processes or DeepSpeed, through alignflow.launch (torchrun/accelerate) with every output
line streamed to the Prefect log and the stage's MLflow run kept under the pipeline's run."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from alignflow.config import PipelineConfig, dump_config
from alignflow.store import StageResult
from alignflow.tracking import TrackingContext


def run_stage_where_configured(
    cfg: PipelineConfig,
    ctx: TrackingContext,
    stage: str,
    run: Callable[..., StageResult],
    **upstream: StageResult | None,
) -> StageResult:
    """`run(cfg, ctx, **upstream)` here (each upstream stage's result under its name), or the same stage launched as `cfg.compute[stage]` says
    (its upstream stages are found on disk by their cache keys, as `python -m tasks.<stage>`
    finds them)."""
    compute = cfg.compute.get(stage)
    if compute is None or not compute.launched:
        with gpu_slots(cfg, stage):
            return run(cfg, ctx, **upstream)
    from prefect import get_run_logger

    from alignflow import launch

    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix=f"alignflow-{stage}-") as scratch:
        config_path = Path(scratch, "config.yaml")
        config_path.write_text(dump_config(cfg))  # the exact config: same cache keys there
        with gpu_slots(cfg, stage):
            return launch.run(
                stage, config_path, nproc=compute.nproc, launcher=compute.launcher,
                deepspeed=compute.deepspeed, on_line=logger.info,
                env={launch.TRACKING_ENV: ctx.model_dump_json()},
            )  # fmt: skip


@contextlib.contextmanager
def gpu_slots(cfg: PipelineConfig, stage: str, timeout_s: float | None = None) -> Iterator[int]:
    """Hold one slot of the `run.gpu_limit` Prefect concurrency limit per process the stage runs
    on, while it runs; yields how many (0 when the server defines no such limit: unlimited)."""
    from prefect import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    name = cfg.run.gpu_limit
    compute = cfg.compute.get(stage)
    slots = compute.nproc if compute else 1
    if name:
        with get_client(sync_client=True) as client:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                name = None
    if not name:
        yield 0
        return
    if slots > limit.limit:
        raise ValueError(
            f"compute.{stage}.nproc is {slots}, but the Prefect concurrency limit '{name}' has "
            f"only {limit.limit} slots: it would wait forever"
        )
    with concurrency(name, occupy=slots, timeout_seconds=timeout_s, strict=True):
        yield slots
