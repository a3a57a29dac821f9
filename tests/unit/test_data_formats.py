"""Every input format normalizes to the canonical rows of docs/architecture.md; bad records say where and why."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignflow.data.errors import DataError
from alignflow.data.formats import FORMATS, detect_format
from alignflow.data.load import load_dataset_rows

LLAMAFACTORY = Path(__file__).parents[3] / "shared" / "fixtures" / "llamafactory"
ROLES = {"system", "user", "assistant", "tool"}


def write_jsonl(tmp_path: Path, records: list[dict], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    lines = (json.dumps(record, ensure_ascii=False) for record in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_messages(messages: list[dict]) -> None:
    assert messages and all(m["role"] in ROLES for m in messages)
    for m in messages:
        assert isinstance(m["content"], str)
        assert m["content"].strip() or m.get("tool_calls"), m
        assert set(m) <= {"role", "content", "tool_calls", "loss_weight"}


def assert_canonical(row: dict, kind: str) -> None:
    if kind == "sft":
        assert set(row) <= {"messages", "tools"}
        assert_messages(row["messages"])
    elif kind == "preference":
        assert set(row) == {"prompt", "chosen", "rejected"}
        for key in row:
            assert_messages(row[key])
        assert row["chosen"] != row["rejected"]
    elif kind == "unpaired":
        assert set(row) == {"prompt", "completion", "label"}
        assert_messages(row["prompt"])
        assert_messages(row["completion"])
        assert isinstance(row["label"], bool)
    else:
        assert set(row) == {"prompt"}
        assert_messages(row["prompt"])


@pytest.fixture
def llamafactory() -> Path:
    if not LLAMAFACTORY.is_dir():
        pytest.skip(f"LLaMA-Factory fixtures not found at {LLAMAFACTORY}")
    return LLAMAFACTORY


# ---- the real LLaMA-Factory demo files ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "format", "kind", "count"),
    [
        ("alpaca_en_demo.json", "alpaca", "sft", 999),
        ("dpo_en_demo.json", "sharegpt_pairwise", "preference", 300),
        ("kto_en_demo.json", "unpaired", "unpaired", 300),
        ("glaive_toolcall_en_demo.json", "sharegpt", "sft", 300),
    ],
)
def test_each_llamafactory_file_loads_with_the_right_format_and_row_count(
    llamafactory, name, format, kind, count
):
    rows, report = load_dataset_rows(llamafactory / name)
    assert (report.format, report.kind) == (format, kind)
    assert (report.records_read, report.rows_emitted, len(rows)) == (count, count, count)
    assert report.records_skipped == 0
    for row in rows:
        assert_canonical(row, kind)


def test_glaive_keeps_tool_turns_and_parses_tools_into_a_list(llamafactory):
    rows, _ = load_dataset_rows(llamafactory / "glaive_toolcall_en_demo.json")
    raw = json.loads((llamafactory / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    calls = [m for r in rows for m in r["messages"] if "tool_calls" in m]
    tool_turns = [m for r in rows for m in r["messages"] if m["role"] == "tool"]
    speakers = Counter(t["from"] for r in raw for t in r["conversations"])
    assert len(calls) == speakers["function_call"] == 211
    assert len(tool_turns) == speakers["observation"] == 211
    first_call = calls[0]["tool_calls"][0]["function"]
    assert first_call == {
        "name": "search_recipes",
        "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]},
    }
    with_tools = [(row, record) for row, record in zip(rows, raw, strict=True) if "tools" in row]
    assert len(with_tools) == sum(1 for r in raw if json.loads(r["tools"]))
    for row, record in with_tools:
        assert row["tools"] == json.loads(record["tools"])
        assert isinstance(row["tools"], list) and row["tools"][0]["name"]


def test_dpo_demo_system_turn_is_kept_at_the_front_of_the_prompt(llamafactory):
    rows, _ = load_dataset_rows(llamafactory / "dpo_en_demo.json")
    raw = json.loads((llamafactory / "dpo_en_demo.json").read_text(encoding="utf-8"))
    index = next(i for i, r in enumerate(raw) if r["conversations"][0]["from"] == "system")
    assert rows[index]["prompt"][0]["role"] == "system"
    assert rows[index]["chosen"] == [
        {"role": "assistant", "content": raw[index]["chosen"]["value"]}
    ]


# ---- each format from hand-written records ------------------------------------------------------


def load(tmp_path: Path, *records: dict, **kwargs):
    return load_dataset_rows(write_jsonl(tmp_path, list(records)), **kwargs)


def test_alpaca_with_system_history_and_input_becomes_one_conversation(tmp_path):
    rows, report = load(
        tmp_path,
        {
            "instruction": "翻译成英文",
            "input": "你好，世界",
            "output": "Hello, world",
            "system": "你是翻译助手",
            "history": [["早上好", "Good morning"]],
        },
    )
    assert report.format == "alpaca"
    assert rows == [
        {
            "messages": [
                {"role": "system", "content": "你是翻译助手"},
                {"role": "user", "content": "早上好"},
                {"role": "assistant", "content": "Good morning"},
                {"role": "user", "content": "翻译成英文\n你好，世界"},
                {"role": "assistant", "content": "Hello, world"},
            ]
        }
    ]


def test_sharegpt_chinese_conversation_with_system_and_tool_turns(tmp_path):
    call = {"name": "天气", "arguments": {"城市": "北京"}}
    rows, report = load(
        tmp_path,
        {
            "conversations": [
                {"from": "system", "value": "你是助手"},
                {"from": "human", "value": "北京天气怎么样？"},
                {"from": "function_call", "value": json.dumps(call, ensure_ascii=False)},
                {"from": "observation", "value": '{"温度": 20}'},
                {"from": "gpt", "value": "北京今天20度。"},
            ],
            "tools": json.dumps([{"name": "天气", "parameters": {}}], ensure_ascii=False),
        },
    )
    assert report.format == "sharegpt"
    messages = rows[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": call}],
    }
    assert messages[3]["content"] == '{"温度": 20}'
    assert rows[0]["tools"] == [{"name": "天气", "parameters": {}}]


def test_messages_content_may_be_a_list_of_text_parts(tmp_path):
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    rows, report = load(
        tmp_path,
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "hi"}]},
    )
    assert report.format == "messages"
    assert rows[0]["messages"][0] == {"role": "user", "content": "Hello there"}


def test_prompt_completion_plain_and_conversational_become_sft_messages(tmp_path):
    plain = {"prompt": "2+2?", "completion": "4"}
    chat = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    rows, report = load(tmp_path, plain, chat)
    assert report.format == "prompt_completion"
    expected = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert rows == [{"messages": expected}, {"messages": expected}]


def test_explicit_preference_with_strings_and_with_messages(tmp_path):
    rows, report = load(
        tmp_path,
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
        {
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris"}],
            "rejected": [{"role": "assistant", "content": "Lyon"}],
        },
    )
    assert report.format == "preference"
    expected = {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris"}],
        "rejected": [{"role": "assistant", "content": "Lyon"}],
    }
    assert rows == [expected, expected]


def test_implicit_preference_extracts_the_shared_prefix_as_prompt(tmp_path):
    user = {"role": "user", "content": "天空是什么颜色？"}
    rows, report = load(
        tmp_path,
        {
            "chosen": [user, {"role": "assistant", "content": "蓝色。"}],
            "rejected": [user, {"role": "assistant", "content": "绿色。"}],
        },
    )
    assert report.format == "preference"
    assert rows[0] == {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "蓝色。"}],
        "rejected": [{"role": "assistant", "content": "绿色。"}],
    }


def test_hh_rlhf_transcripts_split_into_turns_and_a_shared_prompt(tmp_path):
    head = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    rows, report = load(
        tmp_path,
        {"chosen": head + "\n\nAssistant: Why did...", "rejected": head + "\n\nAssistant: No."},
    )
    assert report.format == "hh_rlhf"
    assert rows[0]["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Why did..."}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "No."}]


def test_ranking_b_over_a_over_c_over_d_gives_the_six_ordered_pairs(tmp_path):
    # rank 1 is best: B (rank 1) > A (2) > C (3) > D (4).
    record = {"prompt": "p", "responses": ["A", "B", "C", "D"], "rank": [2, 1, 3, 4]}
    rows, report = load(tmp_path, record)
    assert report.format == "ranking"
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    expected = {("B", "A"), ("B", "C"), ("B", "D"), ("A", "C"), ("A", "D"), ("C", "D")}
    assert pairs == expected and len(rows) == 6
    assert all(r["prompt"] == [{"role": "user", "content": "p"}] for r in rows)
    assert (report.records_read, report.rows_emitted, report.ties_skipped) == (1, 6, 0)


def test_ranking_by_scores_skips_and_counts_ties(tmp_path):
    record = {"prompt": "p", "responses": ["A", "B", "C"], "scores": [0.9, 0.9, 0.1]}
    rows, report = load(tmp_path, record)
    pairs = sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows)
    assert pairs == [("A", "C"), ("B", "C")]
    assert report.ties_skipped == 1


def test_unpaired_messages_with_label_split_into_prompt_and_completion(tmp_path):
    rows, report = load(
        tmp_path,
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ],
            "label": False,
        },
        {"prompt": "q2", "completion": "a2", "label": True},
    )
    assert report.format == "unpaired"
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
        "label": False,
    }
    assert rows[1]["label"] is True and rows[1]["completion"][0]["content"] == "a2"


def test_prompt_only_records_become_prompt_rows(tmp_path):
    rows, report = load(tmp_path, {"prompt": "写一首诗"})
    assert (report.format, report.kind) == ("prompt", "prompt")
    assert rows == [{"prompt": [{"role": "user", "content": "写一首诗"}]}]


def test_every_hand_written_format_is_detected_by_exactly_one_detector(tmp_path):
    samples = {
        "alpaca": {"instruction": "i", "input": "", "output": "o"},
        "sharegpt": {"conversations": [{"from": "human", "value": "q"}]},
        "sharegpt_pairwise": {"conversations": [], "chosen": {}, "rejected": {}},
        "messages": {"messages": []},
        "prompt_completion": {"prompt": "p", "completion": "c"},
        "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
        "hh_rlhf": {"chosen": "\n\nHuman: q", "rejected": "\n\nHuman: q"},
        "ranking": {"prompt": "p", "responses": [], "rank": []},
        "unpaired": {"messages": [], "label": True},
        "prompt": {"prompt": "p"},
        "classification": {"text": "t", "label": "spam"},
        "llamafactory_v1": {
            "messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]}]
        },
        "llamafactory_v1_pairwise": {"chosen_messages": [], "rejected_messages": []},
    }
    assert set(samples) == set(FORMATS)
    for name, record in samples.items():
        assert [f.name for f in FORMATS.values() if f.detect(record)] == [name]


def test_format_override_skips_detection(tmp_path):
    # A prompt-only record read as prompt/completion: the override wins and names what is missing.
    path = write_jsonl(tmp_path, [{"prompt": "p"}])
    with pytest.raises(DataError, match=r":1: completion: is missing"):
        load_dataset_rows(path, format="prompt_completion")
    rows, report = load_dataset_rows(path, format="prompt")
    assert report.format == "prompt" and len(rows) == 1


def test_unknown_format_name_lists_the_known_ones(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": "p"}])
    with pytest.raises(DataError, match="unknown format 'alpacca'.*alpaca, sharegpt"):
        load_dataset_rows(path, format="alpacca")


def test_undetectable_records_raise_listing_known_formats():
    with pytest.raises(DataError, match=r"no known format matches keys \['foo'\].*alpaca \("):
        detect_format([{"foo": 1}])


def test_a_mix_of_formats_is_ambiguous():
    records = [{"prompt": "p", "completion": "c"}, {"messages": []}, {"messages": []}]
    with pytest.raises(DataError, match=r"several formats \(messages x2, prompt_completion x1\)"):
        detect_format(records)


# ---- bad records ---------------------------------------------------------------------------------

BAD_RECORDS = [
    ({"instruction": "", "input": "", "output": "o"}, "instruction: is empty"),
    ({"instruction": "i", "input": "", "output": " \n\t"}, "output: is whitespace-only"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role: unknown role 'bot'"),
    (
        {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
        "conversations[1].from: unknown role 'robot'",
    ),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen: is identical to rejected"),
    (
        {"prompt": "p", "responses": ["a", "b", "c"], "rank": [1, 2]},
        "rank: has 2 entries but responses has 3",
    ),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content: is whitespace-only"),
    ({"messages": [{"role": "user", "content": "q"}], "label": "yes"}, "label: is 'yes'"),
    (
        {"conversations": [{"from": "function_call", "value": "{not json"}]},
        "conversations[0].value: is not valid JSON",
    ),
]


@pytest.mark.parametrize(("record", "message"), BAD_RECORDS)
def test_bad_record_raises_one_line_naming_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path, [record, record])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:1: {message}")
    assert "; expected " in text and "\n" not in text


def test_bad_record_in_a_json_array_is_named_by_its_index(tmp_path):
    path = tmp_path / "d.json"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps([good, good, {**good, "chosen": "b"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r":record 2: chosen: is identical to rejected; expected"):
        load_dataset_rows(path)


def test_on_error_skip_counts_every_bad_record_by_reason_instead_of_raising(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(
        tmp_path,
        [good, {**good, "chosen": "b"}, {**good, "prompt": " "}, good, {**good, "rejected": "a"}],
    )
    rows, report = load_dataset_rows(path, on_error="skip")
    assert (report.records_read, report.rows_emitted, len(rows)) == (5, 2, 2)
    assert report.skipped == Counter({"chosen == rejected": 2, "empty text": 1})
    assert [p.split(": ")[0] for p in report.problems] == [f"{path}:2", f"{path}:3", f"{path}:5"]


def test_on_error_skip_counts_malformed_jsonl_lines_too(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p"}\n{"prompt": \n', encoding="utf-8")
    rows, report = load_dataset_rows(path, on_error="skip")
    assert len(rows) == 1 and report.records_read == 2
    assert report.skipped == Counter({"bad JSON": 1})
    assert report.problems[0].startswith(f"{path}:2: json: invalid JSON")


MORE_BAD_RECORDS = [
    (
        {"prompt": "p", "responses": ["a", "b", "a"], "rank": [1, 2, 3]},
        "responses: contains the same response twice",
    ),
    ({"prompt": "p", "responses": ["a"], "scores": [1]}, "responses: has one response"),
    ({"chosen": "plain", "rejected": "text"}, "prompt: is missing and chosen is plain text"),
    (
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant:"},
        "rejected (turn 2, Assistant): is empty",
    ),
    (
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "Assistant: b"},
        "rejected: starts with 'Assistant: b'",
    ),
    (
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}],
            "label": 1,
        },
        "label: is 1",
    ),
    (
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}
        | {"label": True},
        "messages[1].role: is 'user' in a 2-turn list",
    ),
    (
        {"instruction": "i", "output": "o", "history": [["only user"]]},
        "history[0]: is ['only user']",
    ),
]


@pytest.mark.parametrize(("record", "message"), MORE_BAD_RECORDS)
def test_more_bad_records_name_the_field_and_what_was_wrong(tmp_path, record, message):
    path = write_jsonl(tmp_path, [record])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value).startswith(f"{path}:1: {message}")


def test_an_all_tied_ranking_emits_no_rows_but_counts_every_tie(tmp_path):
    record = {"prompt": "p", "responses": ["A", "B", "C"], "scores": [1, 1, 1]}
    rows, report = load(tmp_path, record)
    assert rows == [] and report.ties_skipped == 3 and report.records_skipped == 0


def test_empty_file_is_an_error_not_an_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.jsonl: records: none found; expected at least one"):
        load_dataset_rows(path)


def test_skipped_problems_are_listed_in_file_order_with_malformed_lines_among_them(tmp_path):
    path = tmp_path / "d.jsonl"
    good, bad = '{"prompt": "p"}', '{"prompt": " "}'
    path.write_text("\n".join([good, bad, "{oops", good, bad]) + "\n", encoding="utf-8")
    rows, report = load_dataset_rows(path, on_error="skip")
    assert [p.split(": ")[0] for p in report.problems] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    assert (report.records_read, len(rows), report.records_skipped) == (5, 2, 3)
