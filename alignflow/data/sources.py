"""Read raw records, with provenance, from local files, `datasets` folders and hub datasets.

A source is one of:
- a JSON, JSONL, CSV or Parquet file, or a glob of them (expanded in sorted order);
- a `datasets.save_to_disk` folder: a Dataset, or a DatasetDict read at `split`; memory-mapped Arrow,
  read row by row;
- any other folder (data files `datasets.load_dataset` understands), or a string that is not an
  existing path and looks like a hub dataset id: `name`, `owner/name` or `owner/name:config`. Both
  stream through `datasets.load_dataset(..., streaming=True)`, so nothing is downloaded up front and
  `HF_HUB_OFFLINE=1` is honoured.

Every record carries its source and where in it: the file and a 1-based line number for JSONL and
CSV; `record N` (0-based) for a JSON array, a Parquet table, or a folder / hub dataset (whose source
is the folder or the id). Files are UTF-8 (a leading BOM is fine); a byte that is not is reported at
its line and column. CSV cells stay strings (any length), so CSV suits flat formats (alpaca,
prompt/completion, string preferences, HH-RLHF); nested data belongs in JSON(L)/Parquet.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignflow.data.errors import DataError

SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".parquet")
GLOB_CHARS = "*?["
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time: memory stays bounded, Python calls stay few
# The default (128 KiB) rejects a long document in one cell; 2**31 - 1 still fits a C long everywhere.
CSV_FIELD_LIMIT = 2**31 - 1
# `name`, `owner/name` or `owner/name:config`, the characters hub repository names allow.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")
HUB_EXPECTED = "a local file, folder or reachable hub dataset id"
FOLDER_EXPECTED = (
    "a datasets.save_to_disk folder or a folder of data files (JSON, CSV, Parquet, ...)"
)
# Files are read with errors="surrogateescape": each byte that is not UTF-8 becomes one of these.
BAD_BYTE = re.compile("[\udc80-\udcff]")
JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from."""

    data: dict[str, Any]
    source: str
    location: int | str  # line number (JSONL, CSV) or "record N" (JSON array, Parquet, datasets)


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
    """Yield every record of a source (see the module docstring for what a source can be).

    Args:
        path_or_glob: a file, a glob (sorted expansion; matching nothing is an error), a folder or a
            hub dataset id.
        bad_lines: when given, bad records found while reading (a JSONL line that is not JSON, not
            UTF-8 or not an object; a JSON array item that is not an object; a CSV row with more
            cells than the header) are appended here and skipped instead of raised, so a linter
            can list them all. Whole-file problems (a malformed JSON array, a bad byte in JSON or
            CSV, an unreadable Parquet file or dataset) always raise.
        split: the split of a DatasetDict folder, data folder or hub dataset; files ignore it.
    Raises:
        DataError naming file:line (or the folder / id) and what was expected.
    """
    text = str(path_or_glob)
    path = Path(text)
    if path.is_dir():
        yield from _read_folder(path, split)
    elif _looks_like_hub_id(text):
        name, _, config = text.partition(":")
        yield from _stream_dataset(name, config or None, split, text, HUB_EXPECTED)
    else:
        for file in expand_paths(text):
            yield from _read_file(file, bad_lines)


def _looks_like_hub_id(text: str) -> bool:
    # A missing "data.jsonl" is a typo'd file, not a hub dataset, so data-file suffixes never are.
    if any(char in text for char in GLOB_CHARS) or Path(text).exists():
        return False
    name = text.partition(":")[0]
    return HUB_ID.fullmatch(text) is not None and Path(name).suffix.lower() not in SUFFIXES


def _read_file(path: Path, bad_lines: list[DataError] | None) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from _read_json(path, bad_lines)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, bad_lines)
    elif suffix == ".csv":
        yield from _read_csv(path, bad_lines)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(
            "path", f"unsupported file type {suffix or '(none)'!r}", f"one of {SUFFIXES}"
        ).at(str(path), None)


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _object(value: Any, source: str, location: int | str) -> Record:
    if not isinstance(value, dict):
        raise DataError(
            "record", f"is a JSON {_json_type(value)}", "a JSON object", reason="not an object"
        ).at(source, location)
    return Record(value, source, location)


def _check_utf8(text: str, source: str, first_line: int) -> None:
    """Raise at the first byte of `text` (read with surrogateescape) that was not UTF-8."""
    bad = BAD_BYTE.search(text)
    if bad is None:
        return
    line_start = text.rfind("\n", 0, bad.start()) + 1
    byte = ord(bad.group()) - 0xDC00
    raise DataError(
        "encoding",
        f"invalid UTF-8 byte 0x{byte:02x} at column {bad.start() - line_start + 1}",
        "UTF-8 text",
        reason="bad encoding",
    ).at(source, first_line + text.count("\n", 0, bad.start()))


class _StrictJSONError(ValueError):
    """JSON that Python's parser accepts but data must not hold: NaN/Infinity (not JSON), or a
    key written twice in one object (the parser keeps the last, silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _StrictJSONError(f"key {json.dumps(key)[:80]} appears twice in one object")
        record[key] = value
    return record


def _refuse_constant(name: str) -> Any:
    raise _StrictJSONError(f"{name} is not a JSON number (write null, or a finite number)")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
_SPACE = re.compile(r"\s*")
DEEP = "nested too deeply"


def _strict_problem(error: Exception) -> str:
    return (
        f"invalid JSON: {DEEP}" if isinstance(error, RecursionError) else f"invalid JSON: {error}"
    )


def _failing_record(text: str) -> int | str:
    """Where in a JSON array the strict parse fails: `record N`, or line 1 when not an array."""
    index, position = 0, _SPACE.match(text).end()
    if not text.startswith("[", position):
        return 1
    position += 1
    while True:
        try:
            _, position = _DECODER.raw_decode(text, _SPACE.match(text, position).end())
        except (_StrictJSONError, RecursionError):
            return f"record {index}"
        except json.JSONDecodeError:
            return 1
        position = _SPACE.match(text, position).end()
        if not text.startswith(",", position):
            return 1
        index, position = index + 1, position + 1


def _read_json(path: Path, bad_lines: list[DataError] | None) -> Iterator[Record]:
    source = str(path)
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    _check_utf8(text, source, 1)
    if not text.strip():
        return  # no records, like an empty JSONL or CSV file
    try:
        data = _DECODER.decode(text)
    except (_StrictJSONError, RecursionError) as error:
        raise DataError(
            "json", _strict_problem(error), "a JSON array of objects", reason="bad JSON"
        ).at(source, _failing_record(text)) from None
    except json.JSONDecodeError as error:
        hint = " (one record per line? name the file .jsonl)" if error.msg == "Extra data" else ""
        raise DataError(
            "json",
            f"{_json_problem(error, error.colno)}{hint}",
            "a JSON array of objects",
            reason="bad JSON",
        ).at(source, error.lineno) from error
    if not isinstance(data, list):
        raise DataError(
            "json", f"top level is a JSON {_json_type(data)}", "a JSON array of objects"
        ).at(source, 1)
    for index, value in enumerate(data):
        try:
            yield _object(value, source, f"record {index}")
        except DataError as error:
            _skip_or_raise(error, bad_lines)


def _read_jsonl(path: Path, bad_lines: list[DataError] | None) -> Iterator[Record]:
    source = str(path)
    # Line by line with bad bytes escaped, so one bad line is skippable without losing the rest.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) are not records
            try:
                yield _jsonl_record(line, source, number)
            except DataError as error:
                _skip_or_raise(error, bad_lines)


def _jsonl_record(line: str, source: str, number: int) -> Record:
    _check_utf8(line, source, number)
    try:
        # Without its newline, so an error at the end of the line is not "line 2, column 1".
        value = _DECODER.decode(line.rstrip("\r\n"))
    except (_StrictJSONError, RecursionError) as error:
        raise DataError(
            "json", _strict_problem(error), "one JSON object per line", reason="bad JSON"
        ).at(source, number) from None
    except json.JSONDecodeError as error:
        raise DataError(
            "json",
            _json_problem(error, error.colno),
            "one JSON object per line",
            reason="bad JSON",
        ).at(source, number) from error
    return _object(value, source, number)


def _json_problem(error: json.JSONDecodeError, column: int) -> str:
    # Some messages end "... starting at"; the column completes them.
    return f"invalid JSON: {error.msg.removesuffix(' at')} at column {column}"


def _skip_or_raise(error: DataError, bad_lines: list[DataError] | None) -> None:
    if bad_lines is None:
        raise error
    bad_lines.append(error)


def _checked_lines(lines: Iterable[str], source: str) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        _check_utf8(line, source, number)
        yield line


def _read_csv(path: Path, bad_lines: list[DataError] | None) -> Iterator[Record]:
    source = str(path)
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(_checked_lines(handle, source))
        try:
            header = reader.fieldnames  # reads the header line, so line_num below is past it
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    _skip_or_raise(_extra_cells(header, source, start), bad_lines)
                else:  # a quoted cell may span lines; report the line the record starts on
                    yield Record(dict(row), source, start)
                start = reader.line_num + 1
        except csv.Error as error:
            raise DataError(
                "csv", f"malformed CSV: {error}", "RFC 4180 CSV with a header row", reason="bad CSV"
            ).at(source, reader.line_num) from error


def _extra_cells(header: Sequence[str] | None, source: str, line: int) -> DataError:
    return DataError(
        "record",
        f"has more cells than the header's {len(header or [])}",
        "one cell per header column",
        reason="bad CSV",
    ).at(source, line)


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    index = 0
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as error:
        raise DataError(
            "parquet", f"cannot read: {_first_line(error)}", "a Parquet file", reason="bad Parquet"
        ).at(source, None) from error
    with parquet:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                yield Record(row, source, f"record {index}")
                index += 1


def _is_saved_dataset(folder: Path) -> bool:
    from datasets import config

    dataset = (folder / config.DATASET_STATE_JSON_FILENAME).is_file() and (
        folder / config.DATASET_INFO_FILENAME
    ).is_file()
    return dataset or (folder / config.DATASETDICT_JSON_FILENAME).is_file()


def _read_folder(folder: Path, split: str) -> Iterator[Record]:
    source = str(folder)
    if not _is_saved_dataset(folder):
        yield from _stream_dataset(source, None, split, source, FOLDER_EXPECTED)
        return
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(source, keep_in_memory=False)  # memory-mapped, never copied
    except Exception as error:  # any library failure becomes one line for people
        raise _cannot_load(error, source, FOLDER_EXPECTED) from error
    if isinstance(dataset, DatasetDict):
        dataset = _pick_split(dataset, split, source)
    yield from _dataset_records(dataset.with_format(None), source)  # plain Python rows


def _stream_dataset(
    name: str, config: str | None, split: str, source: str, expected: str
) -> Iterator[Record]:
    from datasets import load_dataset
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    # load_dataset("json") would read whatever data files sit in the working directory.
    if name in _PACKAGED_DATASETS_MODULES:
        raise DataError("path", f"{name!r} names a datasets file builder", expected).at(
            source, None
        )
    try:
        splits = load_dataset(name, config, streaming=True)
    except Exception as error:  # any library failure becomes one line for people
        raise _cannot_load(error, source, expected) from error
    yield from _dataset_records(_pick_split(splits, split, source), source)


def _pick_split(splits: Mapping[str, Any], split: str, source: str) -> Any:
    if split not in splits:
        available = ", ".join(repr(name) for name in splits)
        raise DataError(
            "split", f"{split!r} is not in this dataset", f"one of its splits: {available}"
        ).at(source, None)
    return splits[split]


def _dataset_records(dataset: Iterable[dict[str, Any]], source: str) -> Iterator[Record]:
    """Rows of a `datasets` Dataset or IterableDataset as records located `record N`."""
    index = 0
    try:
        for row in dataset:
            yield Record(row, source, f"record {index}")
            index += 1
    except Exception as error:  # the reader's errors vary by file type
        raise DataError(
            "dataset",
            f"cannot read past record {index} ({type(error).__name__}: {_first_line(error)})",
            "data files datasets can parse (read the files as a path or glob for file:line)",
            reason="unreadable dataset",
        ).at(source, None) from error


def _cannot_load(error: Exception, source: str, expected: str) -> DataError:
    from datasets import config

    if isinstance(error, ConnectionError):
        kind = "offline" if config.HF_HUB_OFFLINE else "hub unreachable"
    elif isinstance(error, FileNotFoundError):
        kind = "not found"
    else:
        kind = type(error).__name__
    return DataError("path", f"cannot load dataset ({kind}: {_first_line(error)})", expected).at(
        source, None
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__  # it sits inside our sentence
