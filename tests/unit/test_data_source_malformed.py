"""A corpus of malformed source files, each loaded with on_error="raise" and on_error="skip".

Under raise every case fails with one exact line naming file:line. Under skip a bad record (a JSONL
line, a JSON array item, a CSV row) is counted under its reason while the rows around it survive;
a whole-file problem (broken JSON array, a bad byte in JSON or CSV, no records) raises either way.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignflow.data.errors import DataError
from alignflow.data.load import load_dataset_rows

ALPACA = [
    {"instruction": "say hi", "input": "", "output": "hello"},
    {"instruction": "add", "input": "2 2", "output": "4"},
]
GOOD_LINES = [json.dumps(record) for record in ALPACA]
CSV_HEADER = "instruction,input,output\n"
LATIN1_RECORD = b'{"instruction": "caf\xe9", "input": "", "output": "x"}'  # not UTF-8


def expected_rows(records: list[dict[str, str]]) -> list[dict]:
    """The canonical rows the alpaca records above normalize to."""
    rows = []
    for record in records:
        prompt = "\n".join(text for text in (record["instruction"], record["input"]) if text)
        turns = [{"role": "user", "content": prompt}]
        rows.append({"messages": [*turns, {"role": "assistant", "content": record["output"]}]})
    return rows


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def raised(path: Path, on_error: str) -> str:
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path, on_error=on_error)
    message = str(caught.value)
    assert "\n" not in message
    return message


# (file name, its bytes, the error after "{path}"). Each raises under both raise and skip.
WHOLE_FILE_PROBLEMS = [
    (
        "truncated.json",
        f"[\n{GOOD_LINES[0]},\n{GOOD_LINES[1][:20]}".encode(),
        ":3: json: invalid JSON: Unterminated string starting at column 17;"
        " expected a JSON array of objects",
    ),
    (
        "records.json",
        f"{GOOD_LINES[0]}\n{GOOD_LINES[1]}\n".encode(),
        ":2: json: invalid JSON: Extra data at column 1 (one record per line? name the file"
        " .jsonl); expected a JSON array of objects",
    ),
    (
        "object.json",
        json.dumps({"data": ALPACA}).encode(),
        ":1: json: top level is a JSON object; expected a JSON array of objects",
    ),
    ("empty.jsonl", b"", ": records: none found; expected at least one record"),
    ("empty.json", b"", ": records: none found; expected at least one record"),
    ("empty.csv", b"", ": records: none found; expected at least one record"),
    ("blank.jsonl", b"\n  \n\r\n\n", ": records: none found; expected at least one record"),
    ("blank.json", b"\n  \n\n", ": records: none found; expected at least one record"),
    ("blank.csv", b"\n\n", ": records: none found; expected at least one record"),
    (
        "latin1.json",
        f"[\n{GOOD_LINES[0]},\n".encode() + LATIN1_RECORD + b"\n]\n",
        ":3: encoding: invalid UTF-8 byte 0xe9 at column 21; expected UTF-8 text",
    ),
    (
        "latin1.csv",
        f"{CSV_HEADER}say hi,,hello\n".encode() + b"caf\xe9,,x\n",
        ":3: encoding: invalid UTF-8 byte 0xe9 at column 4; expected UTF-8 text",
    ),
    (
        "broken.parquet",
        b"not parquet",
        ": parquet: cannot read: Parquet magic bytes not found in footer. Either the file is"
        " corrupted or this is not a parquet file; expected a Parquet file",
    ),
]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize(
    ("name", "data", "error"), WHOLE_FILE_PROBLEMS, ids=[case[0] for case in WHOLE_FILE_PROBLEMS]
)
def test_a_whole_file_problem_raises_one_exact_line(tmp_path, name, data, error, on_error):
    path = write(tmp_path, name, data)
    assert raised(path, on_error) == f"{path}{error}"


# (file name, its bytes: a good record, a bad one, a good one; the error after "{path}"; reason).
BAD_RECORDS = [
    (
        "not-json.jsonl",
        f'{GOOD_LINES[0]}\n{{"instruction": "oops"\n{GOOD_LINES[1]}\n'.encode(),
        ":2: json: invalid JSON: Expecting ',' delimiter at column 23;"
        " expected one JSON object per line",
        "bad JSON",
    ),
    (
        "latin1.jsonl",
        f"{GOOD_LINES[0]}\n".encode() + LATIN1_RECORD + f"\n{GOOD_LINES[1]}\n".encode(),
        ":2: encoding: invalid UTF-8 byte 0xe9 at column 21; expected UTF-8 text",
        "bad encoding",
    ),
    (
        "array-line.jsonl",
        f"{GOOD_LINES[0]}\n[1, 2]\n{GOOD_LINES[1]}\n".encode(),
        ":2: record: is a JSON array; expected a JSON object",
        "not an object",
    ),
    (
        "array-item.json",
        json.dumps([ALPACA[0], "text", ALPACA[1]]).encode(),
        ":record 1: record: is a JSON string; expected a JSON object",
        "not an object",
    ),
    (
        "extra-cells.csv",
        f"{CSV_HEADER}say hi,,hello\na,b,c,d\nadd,2 2,4\n".encode(),
        ":3: record: has more cells than the header's 3; expected one cell per header column",
        "bad CSV",
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "error", "reason"), BAD_RECORDS, ids=[case[0] for case in BAD_RECORDS]
)
def test_a_bad_record_raises_one_exact_line_or_is_skipped_and_counted(
    tmp_path, name, data, error, reason
):
    path = write(tmp_path, name, data)
    assert raised(path, "raise") == f"{path}{error}"
    rows, report = load_dataset_rows(path, on_error="skip")
    assert rows == expected_rows(ALPACA)
    assert report.skipped == Counter({reason: 1})
    assert report.problems == [f"{path}{error}"]
    assert (report.records_read, report.rows_emitted) == (3, 2)


def test_a_1mb_jsonl_row_loads_intact(tmp_path):
    record = {"instruction": "summarize", "input": "x" * 1_000_000, "output": "short"}
    path = write(tmp_path, "long.jsonl", (json.dumps(record) + "\n").encode())
    rows, report = load_dataset_rows(path)
    assert rows == expected_rows([record])


def test_a_1mb_csv_cell_loads_intact(tmp_path):
    # Python's csv stops at 131072 characters a cell unless the limit is raised.
    record = {"instruction": "summarize", "input": "y" * 1_000_000, "output": "short"}
    text = f"{CSV_HEADER}{record['instruction']},{record['input']},{record['output']}\n"
    path = write(tmp_path, "long.csv", text.encode())
    rows, report = load_dataset_rows(path)
    assert rows == expected_rows([record])
    assert report.rows_emitted == 1
