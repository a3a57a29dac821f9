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


def test_jsonl_line_that_is_not_an_object_is_an_error_named_with_its_json_type(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: record: is a JSON array; expected a JSON object"):
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


ALPACA = [
    {"instruction": "say hi", "input": "", "output": "hello"},
    {"instruction": "add", "input": "2 2", "output": "4"},
    {"instruction": "name a colour", "input": "", "output": "blue"},
]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The hub unreachable by policy, as HF_HUB_OFFLINE=1 at startup would make it.

    datasets and huggingface_hub read the variable once, at import, so their flags are set too; the
    datasets cache (lock files only: streaming downloads nothing) goes to a temp folder.
    """
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_save_to_disk_dataset_folder_reads_row_by_row_located_by_index(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list(ALPACA).save_to_disk(folder)
    records = list(read_records(folder))
    assert [r.data for r in records] == ALPACA
    assert [(r.source, r.location) for r in records[:2]] == [
        (str(folder), "record 0"),
        (str(folder), "record 1"),
    ]
    rows, report = load_dataset_rows(folder)
    assert (report.format, report.rows_emitted) == ("alpaca", 3)


def test_save_to_disk_dataset_dict_reads_the_split_asked(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    splits = {"train": Dataset.from_list(ALPACA[:2]), "validation": Dataset.from_list(ALPACA[2:])}
    DatasetDict(splits).save_to_disk(folder)
    assert [r.data for r in read_records(folder)] == ALPACA[:2]
    assert [r.data for r in read_records(folder, split="validation")] == ALPACA[2:]
    rows, report = load_dataset_rows(folder, split="validation")
    assert report.rows_emitted == 1


def test_a_split_the_dataset_dict_lacks_names_the_folder_and_the_splits_it_has(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    part = Dataset.from_list(ALPACA)
    DatasetDict({"train": part, "validation": part}).save_to_disk(folder)
    with pytest.raises(DataError) as caught:
        load_dataset_rows(folder, split="test")
    assert str(caught.value) == (
        f"{folder}: split: 'test' is not in this dataset;"
        " expected one of its splits: 'train', 'validation'"
    )


def test_a_folder_of_data_files_streams_through_datasets_load_dataset(tmp_path, offline_hub):
    folder = tmp_path / "hub-like"
    folder.mkdir()
    for split, records in (("train", ALPACA[:2]), ("test", ALPACA[2:])):
        lines = "".join(json.dumps(record) + "\n" for record in records)
        (folder / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    records = list(read_records(folder))
    assert [r.data for r in records] == ALPACA[:2]
    assert [(r.source, r.location) for r in records] == [
        (str(folder), "record 0"),
        (str(folder), "record 1"),
    ]
    assert [r.data for r in read_records(folder, split="test")] == ALPACA[2:]
    with pytest.raises(DataError, match=r"split: 'dev' is not in this dataset; .*'train', 'test'"):
        list(read_records(folder, split="dev"))


def test_a_data_folder_datasets_cannot_parse_is_one_line_naming_the_folder(tmp_path, offline_hub):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"a": 1}\n{"a":\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_records(folder))
    # datasets may fail while resolving the folder or while streaming it; both read as one line.
    stage = "(path: cannot load dataset|dataset: cannot read past record 0)"
    assert re.match(rf"{re.escape(str(folder))}: {stage} \(\w+: ", str(caught.value))
    assert "\n" not in str(caught.value)


def test_an_unknown_hub_id_offline_is_one_line_saying_so(offline_hub):
    with pytest.raises(DataError) as caught:
        load_dataset_rows("no-such-owner/no-such-dataset")
    assert str(caught.value) == (
        "no-such-owner/no-such-dataset: path: cannot load dataset (offline: Couldn't reach"
        " 'no-such-owner/no-such-dataset' on the Hub (OfflineModeIsEnabled));"
        " expected a local file, folder or reachable hub dataset id"
    )


def test_a_missing_data_file_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a file"):
        list(read_records("missing/train.jsonl"))


def test_a_datasets_builder_name_is_not_read_as_a_dataset(offline_hub):
    # load_dataset("json") alone would read whatever data files sit in the working directory.
    with pytest.raises(DataError, match=r"^json: path: 'json' names a datasets file builder"):
        list(read_records("json"))


def test_parquet_bigger_than_one_batch_keeps_order_and_count(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alignflow.data.sources import PARQUET_BATCH_ROWS

    count = PARQUET_BATCH_ROWS * 5 // 2
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist([{"index": i} for i in range(count)]), path)
    records = list(read_records(path))
    assert [r.data["index"] for r in records] == list(range(count))
    assert records[-1].location == f"record {count - 1}"


def test_parquet_is_decoded_in_batches_not_as_one_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wide.parquet"
    table = pa.table({"text": [f"{i:08d}" + "x" * 1000 for i in range(32_768)]})  # 33 MB
    pq.write_table(table, path)  # one row group
    before = pa.total_allocated_bytes()
    records = read_records(path)
    assert next(records).data["text"].startswith("00000000")
    # Measured: ~7 MB held after the first batch (page buffers), all 33 MB for read_table.
    assert pa.total_allocated_bytes() - before < table.nbytes / 3


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("d.jsonl", json.dumps(ALPACA[0]) + "\n"),
        ("d.json", json.dumps([ALPACA[0]])),
        ("d.csv", "instruction,input,output\nsay hi,,hello\n"),
    ],
)
def test_a_utf8_byte_order_mark_is_tolerated(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert [r.data for r in read_records(path)] == [ALPACA[0]]
