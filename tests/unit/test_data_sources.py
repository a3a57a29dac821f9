"""Reading raw records from JSON, JSONL, CSV, Parquet and globs, with file:line provenance."""

from __future__ import annotations

import json
import re

import pytest

from alignflow.data.errors import DataError
from alignflow.data.load import load_dataset_rows
from alignflow.data.sources import read_records


def test_data_error_renders_one_line_with_file_location_field_problem_expected():
    error = DataError("output", "is empty", "non-empty text").at("data.jsonl", 7)
    assert str(error) == "data.jsonl:7: output: is empty; expected non-empty text"
    assert "\n" not in str(error)
    assert (error.source, error.location, error.field) == ("data.jsonl", 7, "output")


def test_jsonl_records_carry_their_line_numbers_and_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    records = list(read_records(path))
    assert [(r.data["a"], r.location) for r in records] == [(1, 1), (2, 3)]
    assert records[0].source == str(path)


def test_malformed_jsonl_line_raises_naming_file_and_that_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_records(path))
    assert str(caught.value).startswith(f"{path}:2: json: invalid JSON")


def test_malformed_jsonl_lines_are_collected_when_asked_and_the_rest_still_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('oops\n{"a": 2}\n[1, 2]x\n', encoding="utf-8")
    bad: list[DataError] = []
    records = list(read_records(path, bad))
    assert [r.data for r in records] == [{"a": 2}]
    assert [e.location for e in bad] == [1, 3]


def test_jsonl_line_that_is_not_an_object_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: record: is a JSON list; expected a JSON object"):
        list(read_records(path))


def test_json_array_records_are_located_by_index(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"a": 1}, {"a": 2}]), encoding="utf-8")
    assert [r.location for r in read_records(path)] == ["record 0", "record 1"]


def test_malformed_json_array_names_the_line_of_the_syntax_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"a": 1},\n{"a": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: json: invalid JSON"):
        list(read_records(path))


def test_json_lines_in_a_dot_json_file_suggest_renaming_to_jsonl(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"name the file \.jsonl"):
        list(read_records(path))


def test_csv_records_carry_the_line_they_start_on_even_after_a_multiline_cell(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\n"say\nhi",,hello\nadd 2+2,,4\n', encoding="utf-8")
    records = list(read_records(path))
    assert [r.location for r in records] == [2, 4]
    assert records[0].data == {"instruction": "say\nhi", "input": "", "output": "hello"}


def test_csv_alpaca_loads_and_a_bad_row_is_reported_at_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,input,output\nhi,,hello\n  ,,world\n", encoding="utf-8")
    rows, report = load_dataset_rows(path, on_error="skip")
    assert report.format == "alpaca"
    assert rows == [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ]
    assert report.problems == [
        f"{path}:3: instruction: is whitespace-only; expected non-empty text"
    ]


def test_parquet_with_nested_messages_and_null_optional_columns_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.Table.from_pylist(
        [
            {"instruction": "hi", "input": "", "output": "hello", "system": None},
            {"instruction": "count", "input": "1 2", "output": "3", "system": "be brief"},
        ]
    )
    pq.write_table(table, path)
    rows, report = load_dataset_rows(path)
    assert (report.format, report.rows_emitted) == ("alpaca", 2)
    assert rows[1]["messages"][0] == {"role": "system", "content": "be brief"}
    assert rows[1]["messages"][1]["content"] == "count\n1 2"
    assert [r.location for r in read_records(path)] == ["record 0", "record 1"]


def test_parquet_messages_lists_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pq.write_table(pa.Table.from_pylist([{"messages": turns}]), path)
    rows, report = load_dataset_rows(path)
    assert report.format == "messages"
    assert rows == [{"messages": turns}]


def test_glob_reads_matching_files_in_sorted_order(tmp_path):
    for name, value in (("b.jsonl", 2), ("a.jsonl", 1), ("c.txt", 3)):
        (tmp_path / name).write_text(json.dumps({"a": value}) + "\n", encoding="utf-8")
    records = list(read_records(tmp_path / "*.jsonl"))
    assert [r.data["a"] for r in records] == [1, 2]
    assert records[0].source.endswith("a.jsonl")


def test_glob_matching_nothing_is_an_error_naming_the_pattern(tmp_path):
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(DataError, match="no files match") as caught:
        list(read_records(pattern))
    assert pattern in str(caught.value)


def test_missing_file_and_unknown_suffix_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(read_records(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        list(read_records(tmp_path / "d.txt"))
