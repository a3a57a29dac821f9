"""Run one stage (`python -m tasks.<stage>`) on N processes under torchrun or accelerate, with
DeepSpeed when asked, streaming its output to a callback.

On CPU: torchrun and `accelerate launch --multi_gpu` start N real gloo processes
(`accelerate launch --cpu` would silently start one). DeepSpeed needs a launcher even for one
process: under plain `python` it looks for mpi4py.

    alignflow launch sft configs/tiny.yaml --nproc 2
    alignflow launch sft configs/tiny.yaml --deepspeed infra/deepspeed/zero2.json
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from alignflow.stages import MULTI_PROCESS_STAGES, STAGES

if TYPE_CHECKING:
    from alignflow.store import StageResult

Launcher = Literal["torchrun", "accelerate"]
LAUNCHERS: tuple[str, ...] = ("torchrun", "accelerate")
# Set by `python -m tasks.<stage> ... --deepspeed PATH` and read by models.trainer_kwargs: how a
# stage is run, not what it computes, so it stays out of the config and the cache key.
DEEPSPEED_ENV = "ALIGNFLOW_DEEPSPEED_CONFIG"
# Where rank 0 writes the stage's result for the launcher: its output stream is shared by every
# rank, and its cache key may differ from one computed here (the key hashes the code).
RESULT_FILE_ENV = "ALIGNFLOW_RESULT_FILE"
# The pipeline's tracking context (JSON), so a stage launched from a Prefect task logs its MLflow
# run under the pipeline's parent run, with the flow run's tags.
TRACKING_ENV = "ALIGNFLOW_TRACKING_CONTEXT"
INFRA = Path(__file__).resolve().parent.parent / "infra"
# What a failed launch quotes: each rank's `error:` line or exception, not torchrun's own report.
_REASON = re.compile(r"^(error: .*|[\w.]*(Error|Exception): .*)$")
_LAUNCHER_NOISE = ("ChildFailedError",)
_MAX_REASONS = 5


class LaunchError(RuntimeError):
    """A launched stage failed; the message names the stage, the command and the exit code."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def _launcher_args(launcher: str, nproc: int, port: int | None) -> list[str]:
    python = sys.executable  # this environment's torch/accelerate, whatever PATH says
    if launcher == "torchrun":
        # --standalone: a free local rendezvous port, so two launches on one machine don't clash.
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if launcher == "accelerate":
        command = [python, "-m", "accelerate.commands.launch"]
        # --multi_gpu (N >= 2 only) is DDP over whatever devices exist: gloo on CPU, nccl on GPUs.
        command += ["--multi_gpu"] if nproc > 1 else []
        command += ["--num_processes", str(nproc), "--num_machines", "1"]
        # Precision is the stage config's (the Trainer's bf16), declared once there.
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        return command + (["--main_process_port", str(port)] if port else [])
    raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")


def build_command(
    stage: str,
    config_path: str | Path,
    overrides: Sequence[str] = (),
    nproc: int = 1,
    launcher: Launcher = "torchrun",
    deepspeed: str | Path | None = None,
    port: int | None = None,
) -> list[str]:
    """The command line that runs `stage` on `nproc` processes.

    Args:
        config_path: the pipeline YAML; `overrides` are `section.key=value` strings.
        deepspeed: a DeepSpeed JSON (e.g. infra/deepspeed/zero2.json) for the TRL Trainer stages.
        port: accelerate's rendezvous port (torchrun finds a free one itself); None: its default.
    """

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    if nproc > 1 and stage not in MULTI_PROCESS_STAGES:
        raise ValueError(
            f"stage {stage!r} does not split its work across processes (only "
            f"{', '.join(MULTI_PROCESS_STAGES)} do): run it with nproc 1"
        )
    if deepspeed is not None and launcher == "accelerate" and nproc == 1:
        # accelerate starts one process as plain `python`, where DeepSpeed looks for MPI.
        raise ValueError("DeepSpeed on one process needs --launcher torchrun")
    command = _launcher_args(launcher, nproc, port)
    command += ["-m", f"tasks.{stage}", str(config_path)]
    if deepspeed is not None:
        command += ["--deepspeed", str(Path(deepspeed).resolve())]
    return command + list(overrides)


def check_deepspeed_config(path: str | Path) -> Path:
    """The DeepSpeed JSON at `path`, which must exist; raises a ValueError saying what to pass."""
    import json

    resolved = Path(path).resolve()
    if not resolved.is_file():
        shipped = sorted(str(p.relative_to(INFRA.parent)) for p in INFRA.glob("deepspeed/*.json"))
        raise ValueError(f"--deepspeed {path}: no such file (shipped: {', '.join(shipped)})")
    try:
        json.loads(resolved.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"--deepspeed {path}:{error.lineno}: not valid JSON ({error.msg})"
        ) from None
    return resolved


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(
    stage: str,
    config_path: str | Path,
    overrides: Sequence[str] = (),
    nproc: int = 1,
    launcher: Launcher = "torchrun",
    deepspeed: str | Path | None = None,
    on_line: Callable[[str], object] = print,
    env: dict[str, str] | None = None,
) -> StageResult:
    """Run `stage` as `build_command` says, passing each output line to `on_line` as it comes;
    `env` is added to the processes' environment.

    Returns the stage's result (rank 0's). Raises LaunchError with the exit code, and the lines
    that say why, when any process fails.
    """
    from alignflow.config import load_config
    from alignflow.store import StageResult

    load_config(config_path, list(overrides))  # a bad config fails here, before N processes start
    if deepspeed is not None:
        deepspeed = check_deepspeed_config(deepspeed)
    port = free_port() if launcher == "accelerate" else None
    command = build_command(stage, config_path, overrides, nproc, launcher, deepspeed, port)
    on_line(f"alignflow launch: {' '.join(command)}")
    with tempfile.TemporaryDirectory(prefix="alignflow-launch-") as scratch:
        result_file = Path(scratch, "result.json")
        extra = {**(env or {}), RESULT_FILE_ENV: str(result_file)}
        returncode, reasons = _stream(command, on_line, extra)
        if returncode != 0:
            raise LaunchError(
                f"stage {stage!r} on {nproc} process(es) under {launcher} exited with code "
                f"{returncode}: " + ("; ".join(reasons) or "see the output above")
                + f"\ncommand: {' '.join(command)}",
                returncode,
            )  # fmt: skip
        return StageResult.model_validate_json(result_file.read_text())


def _stream(
    command: list[str], on_line: Callable[[str], object], env: dict[str, str]
) -> tuple[int, list[str]]:
    """Run `command` with `env` added, stdout and stderr merged, line by line; returns (exit code,
    the lines that say why it failed)."""
    env = dict(os.environ, **env, PYTHONUNBUFFERED="1")  # lines arrive as they are printed
    reasons: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
    ) as process:
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                line = raw.rstrip("\n")
                on_line(line)
                if _is_reason(line) and line not in reasons and len(reasons) < _MAX_REASONS:
                    reasons.append(line)  # each rank prints the same one: once is enough
        except BaseException:  # cancelled (Ctrl-C, Prefect): torchrun passes SIGTERM to its ranks
            process.terminate()
            raise
        returncode = process.wait()
    return returncode, reasons


def _is_reason(line: str) -> bool:
    return bool(_REASON.match(line)) and not any(noise in line for noise in _LAUNCHER_NOISE)
