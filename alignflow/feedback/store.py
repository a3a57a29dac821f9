"""The feedback store: every preference record ever collected, as a folder of Parquet files that
only grows, for the retraining flow to read incrementally.

Each `append` writes one new file, atomically (a hidden temporary, then a rename), named by when it
was written and what it holds, so files sort in write order and a reader never sees a half-written
one. `read(store, after=watermark)` returns the records in files newer than the watermark and the
new watermark (the last file's name) to pass next time.

Nested fields (messages, rankings with gaps, metadata) are stored as JSON text columns: Parquet
then has one fixed schema whatever the prompts and labelers look like.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from alignflow.feedback.records import PreferenceRecord

JSON_FIELDS = ("prompt", "candidates", "ranking", "shown_order", "scores", "meta")
SUFFIX = ".parquet"


def content_digest(records: list[PreferenceRecord]) -> str:
    """A digest of what the records say (not when they were written): the same labels, the same
    digest. Used as the preference dataset's MLflow digest and in file names."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.model_dump_json(exclude={"timestamp"}).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _rows(records: list[PreferenceRecord]) -> list[dict]:
    rows = []
    for record in records:
        row = record.model_dump(mode="json")
        for name in JSON_FIELDS:
            row[name] = json.dumps(row[name], ensure_ascii=False)
        rows.append(row)
    return rows


def append(store: str | Path, records: list[PreferenceRecord]) -> Path | None:
    """Write `records` as one new Parquet file in `store` (created if missing). Returns its path,
    or None when there is nothing to write."""
    if not records:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    final = root / f"{stamp}-{content_digest(records)}{SUFFIX}"
    tmp = root / f".{final.name}.tmp"
    pq.write_table(pa.Table.from_pylist(_rows(records)), tmp)
    os.replace(tmp, final)
    return final


def files(store: str | Path, after: str | None = None, until: str | None = None) -> list[Path]:
    """The store's files in write order, only those written after the `after` watermark (and,
    with `until`, none written after that one)."""
    root = Path(store)
    if not root.is_dir():
        return []
    found = sorted(p for p in root.glob(f"*{SUFFIX}") if not p.name.startswith("."))
    return [
        p for p in found if (after is None or p.name > after) and (until is None or p.name <= until)
    ]


def read(
    store: str | Path, after: str | None = None, until: str | None = None
) -> tuple[list[PreferenceRecord], str | None]:
    """Records in files written after the `after` watermark (up to `until`), oldest first, and
    the watermark to pass next time (unchanged when nothing is new)."""
    import pyarrow.parquet as pq

    records: list[PreferenceRecord] = []
    new = files(store, after, until)
    for path in new:
        for row in pq.read_table(path).to_pylist():
            for name in JSON_FIELDS:
                row[name] = json.loads(row[name])
            records.append(PreferenceRecord.model_validate(row))
    return records, (new[-1].name if new else after)
