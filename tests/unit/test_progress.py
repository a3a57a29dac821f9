"""alignflow.progress: the live line on a terminal, log lines elsewhere."""

from __future__ import annotations

import io
import logging

from alignflow.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_logged_at_its_interval_and_at_the_end(caplog):
    stream = io.StringIO()
    logged = caplog.at_level(logging.INFO, logger="alignflow.progress")
    with logged, Progress("sft", 4, stream=stream, interval_s=3600) as progress:
        for step in range(1, 5):
            progress.update(step, loss=2.0 / step)
    lines = [record.getMessage() for record in caplog.records]
    # the first step (the interval since nothing was shown has passed) and the end, not each step
    assert len(lines) == 2, lines
    assert lines[0].startswith("sft 1/4  25% ") and lines[0].endswith("loss=2")
    assert lines[1].startswith("sft 4/4 100% ") and lines[1].endswith("loss=0.5")
    assert stream.getvalue() == ""  # nothing drawn


def test_a_stopped_run_logs_where_it_stopped_and_a_resumed_one_counts_from_its_checkpoint(caplog):
    logged = caplog.at_level(logging.INFO, logger="alignflow.progress")
    with logged, Progress("ppo", 10, initial=4, stream=io.StringIO(), interval_s=3600) as progress:
        progress.update(5, reward=0.25, kl=1.5)
        progress.update(6, reward=0.5, kl=2.0)
    last = caplog.records[-1].getMessage()
    assert last.startswith("ppo 6/10  60% ") and last.endswith("reward=0.5 kl=2"), last


def test_on_a_terminal_one_line_is_redrawn_in_place_and_ended_once():
    screen = Terminal()
    with Progress("reward", 3, stream=screen) as progress:
        for step in range(1, 4):
            progress.update(step, acc=0.5 + step / 10)
    drawn = screen.getvalue()
    assert drawn.endswith("\n") and drawn.count("\n") == 1  # one line, ended at close
    redraws = [part.strip().removesuffix("\x1b[K") for part in drawn.split("\r") if part]
    assert redraws[0].startswith("reward 1/3  33% ")
    assert redraws[-1].startswith("reward 3/3 100% ") and redraws[-1].endswith("acc=0.8")
