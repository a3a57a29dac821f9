"""Read raw records from local JSON, JSONL, CSV and Parquet files (or a glob of them), with provenance.

Every record carries the file it came from and where in it: a 1-based line number for JSONL and CSV,
`record N` (0-based index) for a JSON array or a Parquet table. CSV cells stay strings, so CSV suits flat
formats (alpaca, prompt/completion, string preferences, HH-RLHF); nested data belongs in JSON(L)/Parquet.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignflow.data.errors import DataError

SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".parquet")
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from."""

    data: dict[str, Any]
    source: str
    location: int | str  # line number (JSONL, CSV) or "record N" (JSON array, Parquet)


def expand_paths(path_or_glob: str | Path) -> list[Path]:
    """The files a path or glob names, sorted so every run reads them in the same order."""
    text = str(path_or_glob)
    if any(char in text for char in GLOB_CHARS):
        matches = sorted(Path(match) for match in glob.glob(text, recursive=True))
        files = [match for match in matches if match.is_file()]
        if not files:
            raise DataError(
                "path", f"no files match {text!r}", f"a pattern matching {'/'.join(SUFFIXES)} files"
            )
        return files
    path = Path(text)
    if not path.is_file():
        raise DataError("path", f"{text!r} does not exist or is not a file", "a readable data file")
    return [path]


def read_records(
    path_or_glob: str | Path, bad_lines: list[DataError] | None = None, *, split: str = "train"
) -> Iterator[Record]:
    """Yield every record of every file the path or glob names.

    Args:
        path_or_glob: a file, or a glob (sorted expansion; matching nothing is an error).
        bad_lines: when given, malformed JSONL lines are appended here and skipped instead of raised,
            so a linter can list them all. A malformed JSON array always raises: nothing after the
            syntax error can be trusted.
    Raises:
        DataError naming file:line for malformed JSON/JSONL, an unknown suffix, or a non-object record.
    """
    for path in expand_paths(path_or_glob):
        suffix = path.suffix.lower()
        if suffix == ".json":
            yield from _read_json(path)
        elif suffix in (".jsonl", ".ndjson"):
            yield from _read_jsonl(path, bad_lines)
        elif suffix == ".csv":
            yield from _read_csv(path)
        elif suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            raise DataError(
                "path", f"unsupported file type {suffix or '(none)'!r}", f"one of {SUFFIXES}"
            ).at(str(path), None)


def _object(value: Any, source: str, location: int | str) -> Record:
    if not isinstance(value, dict):
        raise DataError(
            "record", f"is a JSON {type(value).__name__}", "a JSON object", reason="not an object"
        ).at(source, location)
    return Record(value, source, location)


def _read_json(path: Path) -> Iterator[Record]:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        hint = " (one record per line? name the file .jsonl)" if error.msg == "Extra data" else ""
        raise DataError(
            "json", f"invalid JSON: {error.msg}{hint}", "a JSON array of objects", reason="bad JSON"
        ).at(source, error.lineno) from error
    if not isinstance(data, list):
        raise DataError(
            "json", f"top level is a {type(data).__name__}", "a JSON array of objects"
        ).at(source, 1)
    for index, value in enumerate(data):
        yield _object(value, source, f"record {index}")


def _read_jsonl(path: Path, bad_lines: list[DataError] | None) -> Iterator[Record]:
    source = str(path)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) are not records
            try:
                yield _object(json.loads(line), source, number)
            except json.JSONDecodeError as error:
                bad = DataError(
                    "json",
                    f"invalid JSON: {error.msg} at column {error.colno}",
                    "one JSON object per line",
                    reason="bad JSON",
                ).at(source, number)
                if bad_lines is None:
                    raise bad from error
                bad_lines.append(bad)


def _read_csv(path: Path) -> Iterator[Record]:
    source = str(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames  # reads the header line, so line_num below is past it
        start = reader.line_num + 1
        for row in reader:
            if None in row:
                raise DataError(
                    "record",
                    f"has more cells than the header's {len(header or [])}",
                    "one cell per header column",
                    reason="bad CSV",
                ).at(source, start)
            # A quoted cell may span lines; report the line the record starts on.
            yield Record(dict(row), source, start)
            start = reader.line_num + 1


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    source = str(path)
    for index, row in enumerate(pq.read_table(path).to_pylist()):
        yield Record(row, source, f"record {index}")
