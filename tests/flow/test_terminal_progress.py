"""What a user sees in a terminal: `alignflow run` under a real pseudo-terminal shows one live line
per long stage (step/total, ETA, the stage's figures), and none of the known-harmless noise."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(argv: list[str], columns: int, timeout_s: float) -> tuple[int, str]:
    """Run `argv` on a pseudo-terminal `columns` wide; its exit status and everything it drew."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        os.chdir(REPO)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.execv(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    chunks, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # the terminal closed: the run ended
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if time.monotonic() >= deadline:  # the child leads its own session (pty.fork)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def live_lines(screen: str, name: str) -> list[tuple[int, int, str]]:
    """(step, total, figures) of every redraw of `name`'s live line, in order."""
    found = []
    for part in ANSI.sub("", screen).replace("\r\n", "\n").split("\r"):
        match = re.match(rf"{name} (\d+)/(\d+) +\d+% \d\d:\d\d<\d\d:\d\d ?([^\n]*)", part)
        if match:
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


# slow (42 s, a whole run under a pty): make test's 20 minutes went to the evaluators; it runs
# under make test-all
@pytest.mark.slow
def test_a_run_on_a_terminal_shows_live_progress_per_stage_and_no_noise(tmp_path):
    overrides = [
        f"run.artifacts_root={tmp_path / 'runs'}",
        "sft.epochs=1",
        "reward_model.epochs=1",
        "policy.ppo.updates=6",
        "evaluate.samples_per_prompt=1",
    ]
    argv = [sys.executable, "-m", "alignflow.app.cli", "run", "configs/micro.yaml"]
    for override in overrides:
        argv += ["--set", override]
    code, screen = run_in_terminal(argv, columns=120, timeout_s=400)
    assert code == 0, screen[-3000:]
    for name, figures in (("sft", ["loss="]), ("reward", ["loss=", "acc="]),
                          ("ppo", ["reward=", "kl="])):  # fmt: skip
        lines = live_lines(screen, name)
        assert len(lines) >= 2, f"{name}: no live progress line in\n{screen[-3000:]}"
        steps = [step for step, _, _ in lines]
        total = lines[-1][1]
        assert steps == sorted(steps) and steps[-1] == total > 0, (name, lines)
        assert all(figure in lines[-1][2] for figure in figures), (name, lines[-1])
    assert live_lines(screen, "ppo")[-1][1] == 6
    # every redraw fits the terminal: it never wraps into a new line of its own
    assert all(len(part) < 120 for part in ANSI.sub("", screen).split("\r") if "% " in part[:40])
    for noise in (
        "{'loss'",  # transformers' printed log dicts
        "Setting accelerator to CPU",  # DeepSpeed's detection on a machine without a GPU
        "were not sharded",  # transformers' tensor-parallel check
        "LOAD REPORT",  # a reward model's new head, reported like an error
        "anonymous usage data",  # Prefect's telemetry notice
        "Traceback",
    ):
        assert noise not in screen, noise
