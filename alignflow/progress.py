"""Live progress of long work (training, sampling): on a terminal, one line redrawn in place with
step/total, elapsed time, ETA and the work's key figures (loss, reward, KL); elsewhere (a log
file, the Prefect UI, a launched stage's piped output), the same figures as a log line every
`interval_s` seconds and at the end. Only rank 0 reports.

Transformers' own output for a Trainer (a tqdm bar that an unsized terminal draws empty, or a raw
dict per logging step) is replaced by `watch(trainer, name)`.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from typing import TextIO

from alignflow import distributed

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0  # between two log lines when not on a terminal
REDRAW_INTERVAL_S = 0.2  # between two redraws of the live line
# Trainer log keys worth a place on the line, in this order, with their short names.
TRAINER_FIGURES = {
    "loss": "loss",
    "eval_loss": "eval_loss",
    "accuracy": "acc",
    "rewards/accuracies": "acc",
    "rewards/margins": "margin",
    "reward": "reward",
    "kl": "kl",
}


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _figure(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Progress of `total` steps of work called `name`. `update(step, **figures)` after each step
    (the step count reached, and the latest figures); `close()` at the end (or use `with`)."""

    def __init__(
        self,
        name: str,
        total: int,
        initial: int = 0,
        stream: TextIO | None = None,
        interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.name, self.total, self.step = name, max(int(total), 0), int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_terminal(self.stream)
        self.interval_s = interval_s
        self.enabled = distributed.is_main()
        self.figures: dict[str, float] = {}
        self.started = time.monotonic()
        self.first_step = self.step  # steps done before this process (a resumed run)
        self.shown_at = -math.inf  # when the line was last drawn or logged
        self.closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        """`name step/total pct% elapsed<eta figures`: what is drawn and logged."""
        elapsed = time.monotonic() - self.started
        done = self.step - self.first_step
        left = self.total - self.step
        eta = elapsed / done * left if done > 0 else math.inf
        percent = 100 * self.step / self.total if self.total else 100.0
        figures = " ".join(f"{key}={_figure(value)}" for key, value in self.figures.items())
        text = (
            f"{self.name} {self.step}/{self.total} {percent:3.0f}% "
            f"{_clock(elapsed)}<{_clock(eta if left else 0)}"
        )
        return f"{text} {figures}".rstrip()

    def update(self, step: int | None = None, **figures: float) -> None:
        self.step = self.step + 1 if step is None else int(step)
        self.figures.update({key: value for key, value in figures.items() if value is not None})
        if not self.enabled or self.closed:
            return
        now = time.monotonic()
        if self.live and now - self.shown_at >= REDRAW_INTERVAL_S:
            self._show(now)
        elif not self.live and now - self.shown_at >= self.interval_s and self.step < self.total:
            self._show(now)  # the last state is logged by close(), with the figures logged last

    def _show(self, now: float) -> None:
        self.shown_at = now
        if self.live:
            width = shutil.get_terminal_size().columns  # a fallback width on an unsized terminal
            self.stream.write("\r" + self.line()[: width - 1] + "\x1b[K")
            self.stream.flush()
        else:
            log.info("%s", self.line())

    def close(self) -> None:
        """Show the last state, once, and end the live line."""
        if not self.closed and self.enabled:
            self._show(time.monotonic())
            if self.live:
                self.stream.write("\n")
                self.stream.flush()
        self.closed = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


def watch(trainer, name: str) -> None:
    """Show a transformers Trainer's progress as `Progress` (step/max_steps and the latest logged
    TRAINER_FIGURES) instead of transformers' own bar or printed dicts."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class Watch(TrainerCallback):
        progress: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(name, state.max_steps, initial=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is not None and logs:
                for key, short in TRAINER_FIGURES.items():
                    if isinstance(logs.get(key), (int, float)):
                        self.progress.figures[short] = float(logs[key])

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()
                self.progress = None

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Watch())
