"""Load a dataset: read records from a source, map columns/roles, detect the format, normalize.

`open_dataset` streams: it reads the first records to detect the format (so a wrong file fails at
once), then yields canonical rows one record at a time, so memory does not grow with the file. Its
`LoadReport` is complete when the rows are exhausted. `load_dataset_rows` is the list-returning
convenience over it.

Every bad record raises `DataError` as `file:line: field: problem; expected ...`, or with
`on_error="skip"` is counted under its reason and listed; nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Any

from alignflow.data.errors import DataError
from alignflow.data.formats import FORMATS, Format, detect_format
from alignflow.data.mapping import ColumnMapping
from alignflow.data.messages import Row
from alignflow.data.sources import expand_paths, read_records

DETECT_SAMPLE = 100  # records read to detect a format; enough to see a mix, cheap on any file


@dataclass
class LoadReport:
    """What loading did: counts that add up, and every skipped record's one-line problem."""

    format: str
    kind: str
    records_read: int = 0
    rows_emitted: int = 0
    ties_skipped: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason → records skipped
    problems: list[str] = field(default_factory=list)

    @property
    def records_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        self.problems.append(str(error))


def _position(path: str | Path) -> Callable[[DataError], tuple[int, int]]:
    """Sort key putting errors in reading order: file (as globbed), then line or record index."""
    try:
        order = {str(file): rank for rank, file in enumerate(expand_paths(path))}
    except DataError:  # a folder or a hub id: one source, records in order
        order = {}
    return lambda error: (order.get(str(error.source), 0), int(str(error.location).split()[-1]))


def _format_spec(format: str | None, template: Mapping[str, str] | None) -> Format | None:
    if format is None and template is not None:
        format = "classification"  # a template only means something to that format
    if format is None:
        return None
    if format not in FORMATS:
        raise DataError("format", f"unknown format {format!r}", f"one of {', '.join(FORMATS)}")
    if template is not None:
        from alignflow.data.formats import classification_format

        if format != "classification":
            raise DataError("template", f"is set for format {format!r}", "format: classification")
        return classification_format(template)
    return FORMATS[format]


def _keep(record: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    kept = {}
    for name in columns:
        if record.get(name) is None:
            raise DataError(
                name,
                "is missing",
                f"a {name!r} field (listed in keep_columns)",
                reason="missing field",
            )
        kept[name] = record[name]
    return kept


def open_dataset(
    source: str | Path,
    format: str | None = None,
    on_error: str = "raise",
    *,
    mapping: ColumnMapping | None = None,
    template: Mapping[str, str] | None = None,
    keep_columns: Sequence[str] = (),
    split: str = "train",
) -> tuple[Iterator[Row], LoadReport]:
    """Detect (or take) the format of a source and return (a stream of canonical rows, its report).

    Args:
        source: a JSON/JSONL/CSV/Parquet file, a glob, a `datasets.save_to_disk` folder, a folder
            of data files, or a hub dataset id.
        format: a name from FORMATS to skip detection.
        on_error: "raise" stops at the first bad record; "skip" counts and lists it.
        mapping: renames the source's columns, message keys and role names to the canonical ones.
        template: for format "classification", the {prompt, completion} template.
        keep_columns: source columns copied verbatim onto every row (e.g. metadata a labeler reads).
        split: the split of a folder or hub dataset that has several.
    Raises:
        DataError for a missing source, an undetectable format, or (on_error="raise") a bad record.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error is {on_error!r}; expected 'raise' or 'skip'")
    where = str(source)
    try:
        spec = _format_spec(format, template)
    except DataError as error:
        raise error.at(where, None) from None
    bad_lines: list[DataError] | None = [] if on_error == "skip" else None
    records = read_records(source, bad_lines, split=split)
    if mapping is not None:
        records = (replace(record, data=mapping.apply(record.data)) for record in records)
    head = list(islice(records, DETECT_SAMPLE))
    if spec is None:
        try:
            spec = FORMATS[detect_format(record.data for record in head)]
        except DataError as error:
            raise error.at(where, None) from None
    report = LoadReport(spec.name, spec.kind)
    return _rows(
        chain(head, records), spec, report, on_error, bad_lines, keep_columns, where
    ), report


def _rows(
    records: Iterator,
    spec: Format,
    report: LoadReport,
    on_error: str,
    bad_lines: list[DataError] | None,
    keep_columns: Sequence[str],
    where: str,
) -> Iterator[Row]:
    stats: Counter[str] = Counter()
    errors: list[DataError] = []
    for record in records:
        report.records_read += 1
        try:
            rows = spec.normalize(record.data, stats)
            extra = _keep(record.data, keep_columns) if keep_columns else {}
        except DataError as error:
            located = error.at(record.source, record.location)
            if on_error == "raise":
                raise located from None
            errors.append(located)
            continue
        for row in rows:
            report.rows_emitted += 1
            yield {**row, **extra}
    report.records_read += len(bad_lines or [])
    for error in sorted(errors + (bad_lines or []), key=_position(where)):
        report.skip(error)  # in file order: malformed lines were found while reading, not here
    if report.records_read == 0:
        raise DataError("records", "none found", "at least one record").at(where, None)
    report.ties_skipped = stats["ties_skipped"]


def load_dataset_rows(
    source: str | Path, format: str | None = None, on_error: str = "raise", **options: Any
) -> tuple[list[Row], LoadReport]:
    """`open_dataset`, collected into a list: (canonical rows, LoadReport). Options as there."""
    rows, report = open_dataset(source, format, on_error, **options)
    return list(rows), report
