"""`alignflow data check`: lint a data file — its format, row count, token lengths, every bad record."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignflow.data.errors import DataError
from alignflow.data.load import load_dataset_rows
from alignflow.data.messages import Row

PERCENTILES = (50, 90, 99)
PREVIEW_CHARS = 200  # long contents are cut in the preview so one row fits on a screen


@dataclass
class CheckReport:
    """What `check` found. `ok` is True only when every record is valid (exit code 0, else 2)."""

    path: str
    format: str | None = None
    kind: str | None = None
    records_read: int = 0
    rows: int = 0
    ties_skipped: int = 0
    problems: list[str] = field(default_factory=list)
    token_lengths: dict[str, int] | None = None  # p50/p90/p99/max, with a tokenizer
    notes: list[str] = field(default_factory=list)  # worth knowing, not a data problem
    preview: Row | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2


def check(path: str | Path, format: str | None = None, tokenizer: str | None = None) -> CheckReport:
    """Load every record with skip semantics so the report lists all problems, not just the first.

    File-level failures (no file, a JSON syntax error, no recognizable format) become the one problem.
    """
    report = CheckReport(path=str(path))
    try:
        rows, loaded = load_dataset_rows(path, format=format, on_error="skip")
    except DataError as error:
        report.problems.append(_first_problem(path, format, error))
        return report
    report.format, report.kind = loaded.format, loaded.kind
    report.records_read, report.rows, report.ties_skipped = (
        loaded.records_read,
        loaded.rows_emitted,
        loaded.ties_skipped,
    )
    report.problems = list(loaded.problems)
    report.preview = rows[0] if rows else None
    if tokenizer is not None and rows:
        report.token_lengths = token_length_percentiles(rows, tokenizer, report.notes)
    return report


def _first_problem(path: str | Path, format: str | None, error: DataError) -> str:
    """What a file that failed as a whole says: when every record was bad (so none were left),
    the first bad record says more than "none found"."""
    try:
        load_dataset_rows(path, format=format, on_error="raise")
    except DataError as first:
        return str(first)
    return str(error)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99 and max of a non-empty list."""
    ordered = sorted(values)
    result = {f"p{p}": ordered[math.ceil(p / 100 * len(ordered)) - 1] for p in PERCENTILES}
    return {**result, "max": ordered[-1]}


def _conversations(row: Row) -> list[list[dict[str, Any]]]:
    """The full conversations a row trains on: messages, or prompt + each response."""
    if "messages" in row:
        return [row["messages"]]
    responses = [row[key] for key in ("chosen", "rejected", "completion") if key in row]
    return [row["prompt"] + response for response in responses] or [row["prompt"]]


def token_length_percentiles(
    rows: list[Row], tokenizer_path: str, notes: list[str]
) -> dict[str, int]:
    """Token counts of every conversation, rendered with the tokenizer's chat template when it has one.

    A row the template cannot render (some templates reject tool calls) is counted from its joined
    contents instead, and a note says how many.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    lengths, fallbacks = [], 0
    for row in rows:
        for messages in _conversations(row):
            text = None
            if tok.chat_template:
                try:
                    text = tok.apply_chat_template(messages, tools=row.get("tools"), tokenize=False)
                except Exception:  # any template error: count joined text, say so below
                    fallbacks += 1
            if text is None:
                text = "\n".join(message["content"] for message in messages)
            lengths.append(len(tok(text, add_special_tokens=False)["input_ids"]))
    if not tok.chat_template:
        notes.append("tokenizer has no chat template: lengths count the joined message contents")
    elif fallbacks:
        notes.append(f"chat template failed on {fallbacks} conversations: counted joined contents")
    return percentiles(lengths)


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > PREVIEW_CHARS:
        return value[:PREVIEW_CHARS] + f"... ({len(value)} chars)"
    if isinstance(value, list):
        return [_shorten(item) for item in value]
    if isinstance(value, dict):
        return {key: _shorten(item) for key, item in value.items()}
    return value


def render(report: CheckReport) -> str:
    """The report as people read it in a terminal."""
    lines = [f"path:     {report.path}"]
    if report.format is not None:
        lines.append(f"format:   {report.format} ({report.kind} rows)")
        lines.append(
            f"records:  {report.records_read} read, {len(report.problems)} invalid, "
            f"{report.rows} rows, {report.ties_skipped} tied pairs skipped"
        )
    if report.token_lengths is not None:
        stats = "  ".join(f"{key} {value}" for key, value in report.token_lengths.items())
        lines.append(f"tokens:   {stats}")
    lines += [f"note:     {note}" for note in report.notes]
    lines.append(f"problems: {len(report.problems) or 'none'}")
    lines += [f"  {problem}" for problem in report.problems]
    if report.preview is not None:
        preview = json.dumps(_shorten(report.preview), ensure_ascii=False, indent=2)
        lines += ["preview (first normalized row):", preview]
    lines.append("OK" if report.ok else "INVALID: fix the problems above (exit 2)")
    return "\n".join(lines)
