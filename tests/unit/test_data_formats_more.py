"""Classification and LLaMA-Factory v1 formats, CSV cells holding JSON, and role orders that load."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from alignflow.data.errors import DataError
from alignflow.data.formats import FORMATS, classification_format, detect_format
from alignflow.data.load import load_dataset_rows
from alignflow.demo import prompt_rows, sft_rows


def write_jsonl(tmp_path: Path, records: list[dict], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    lines = (json.dumps(record, ensure_ascii=False) for record in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(tmp_path: Path, header: list[str], *rows: list, name: str = "data.csv") -> Path:
    path = tmp_path / name
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(
            [json.dumps(c, ensure_ascii=False) if isinstance(c, list | dict) else c for c in row]
            for row in rows
        )
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def v1_turn(role: str, text: str, weight: float | None = None) -> dict:
    turn = {"role": role, "content": [{"type": "text", "value": text}]}
    return turn if weight is None else {**turn, "loss_weight": weight}


# ---- classification ----------------------------------------------------------------------------


def test_classification_records_become_user_assistant_pairs_by_the_default_template(tmp_path):
    path = write_jsonl(
        tmp_path, [{"text": "这部电影很好看", "label": "正面"}, {"text": "Meh.", "label": 0}]
    )
    rows, report = load_dataset_rows(path)
    assert (report.format, report.kind) == ("classification", "sft")
    assert rows == [
        {
            "messages": [
                user("Classify the following text.\n\nText: 这部电影很好看\nLabel:"),
                assistant("正面"),
            ]
        },
        {"messages": [user("Classify the following text.\n\nText: Meh.\nLabel:"), assistant("0")]},
    ]


def test_classification_template_may_read_any_column_of_a_csv(tmp_path):
    path = write_csv(
        tmp_path,
        ["text", "label", "lang"],
        ["你好，世界", "greeting", "zh"],
        ["Buy now, cheap!", "spam", "en"],
    )
    template = {"prompt": "[{lang}] Is this spam or a greeting?\n{text}", "completion": " {label}"}
    rows, report = load_dataset_rows(path, format="classification", template=template)
    assert report.format == "classification" and report.records_read == 2
    assert rows[0]["messages"] == [
        user("[zh] Is this spam or a greeting?\n你好，世界"),
        assistant(" greeting"),
    ]
    assert rows[1]["messages"][1] == assistant(" spam")


def test_classification_format_returns_a_format_named_classification_using_the_template():
    spec = classification_format({"prompt": "Sentiment of: {text}", "completion": "{label}!"})
    assert (spec.name, spec.kind) == ("classification", "sft")
    assert spec.normalize({"text": "good", "label": "pos"}, Counter()) == [
        {"messages": [user("Sentiment of: good"), assistant("pos!")]}
    ]
    assert FORMATS["classification"].normalize({"text": "x", "label": 3}, Counter())[0]["messages"][
        1
    ] == assistant("3")


def test_a_template_field_the_record_lacks_is_named(tmp_path):
    path = write_jsonl(tmp_path, [{"text": "hi", "label": "a"}])
    template = {"prompt": "{title}: {text}", "completion": "{label}"}
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path, format="classification", template=template)
    assert str(caught.value) == (
        f"{path}:1: title: is missing; expected a 'title' field "
        "(the classification template reads {title})"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            {"prompt": "{text}"},
            'template: lacks completion; expected a "prompt" and a "completion", '
            'e.g. {"prompt": "Text: {text}", "completion": "{label}"}',
        ),
        (
            {"prompt": "{text}", "completion": "{label}", "system": "x"},
            'template: has unknown keys [\'system\']; expected a "prompt" and a "completion", '
            'e.g. {"prompt": "Text: {text}", "completion": "{label}"}',
        ),
        (
            {"prompt": "{text", "completion": "{label}"},
            "template.prompt: is not a format string (expected '}' before end of string); "
            "expected text with {column} fields; write a literal brace as {{ or }}",
        ),
        (
            {"prompt": "{text.__class__}", "completion": "{label}"},
            "template.prompt: has field {text.__class__}; "
            "expected plain {column} fields naming a column of the record",
        ),
        (
            {"prompt": "{text}", "completion": "  "},
            "template.completion: is '  '; expected non-empty text",
        ),
    ],
)
def test_a_bad_template_is_rejected_before_any_record_is_read(tmp_path, template, message):
    path = write_jsonl(tmp_path, [{"text": "hi", "label": "a"}])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path, format="classification", template=template)
    assert str(caught.value) == f"{path}: {message}"


def test_classification_and_unpaired_are_told_apart_by_their_keys():
    assert detect_format([{"text": "t", "label": "spam"}]) == "classification"
    assert detect_format([{"text": "t", "label": 1}]) == "classification"
    assert detect_format([{"prompt": "p", "completion": "c", "label": True}]) == "unpaired"
    assert detect_format([{"messages": [], "label": False}]) == "unpaired"
    # text + label next to prompt/completion is not a classification record.
    assert detect_format([{"prompt": "p", "completion": "c", "text": "t", "label": True}]) == (
        "unpaired"
    )


def test_a_bool_label_on_a_text_record_points_to_the_unpaired_format(tmp_path):
    path = write_jsonl(tmp_path, [{"text": "t", "label": True}])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == (
        f"{path}:1: label: is True; expected a class name or number "
        "(a true/false label with prompt/completion is the unpaired format)"
    )


# ---- LLaMA-Factory v1 --------------------------------------------------------------------------


def test_llamafactory_v1_sft_keeps_per_turn_loss_weight_as_floats(tmp_path):
    record = {
        "messages": [
            v1_turn("system", "你是助手", 0.0),
            v1_turn("user", "介绍一下你自己。", 0),
            v1_turn("assistant", "我是一个 AI 助手。", 1),
            v1_turn("user", "再说一次"),
            v1_turn("assistant", "好的。", 0.5),
        ]
    }
    rows, report = load_dataset_rows(write_jsonl(tmp_path, [record]))
    assert (report.format, report.kind) == ("llamafactory_v1", "sft")
    assert rows == [
        {
            "messages": [
                {"role": "system", "content": "你是助手", "loss_weight": 0.0},
                {"role": "user", "content": "介绍一下你自己。", "loss_weight": 0.0},
                {"role": "assistant", "content": "我是一个 AI 助手。", "loss_weight": 1.0},
                {"role": "user", "content": "再说一次"},
                {"role": "assistant", "content": "好的。", "loss_weight": 0.5},
            ]
        }
    ]
    weights = [m["loss_weight"] for m in rows[0]["messages"] if "loss_weight" in m]
    assert all(type(w) is float for w in weights)


def test_llamafactory_v1_pairwise_splits_the_shared_prompt_off_both_conversations(tmp_path):
    history = [v1_turn("user", "问题", 0.0), v1_turn("assistant", "答", 1.0)]
    record = {
        "chosen_messages": [
            *history,
            v1_turn("user", "再问", 0.0),
            v1_turn("assistant", "更优", 1.0),
        ],
        "rejected_messages": [
            *history,
            v1_turn("user", "再问", 0.0),
            v1_turn("assistant", "较差", 1.0),
        ],
    }
    rows, report = load_dataset_rows(write_jsonl(tmp_path, [record]))
    assert (report.format, report.kind) == ("llamafactory_v1_pairwise", "preference")
    assert [m["content"] for m in rows[0]["prompt"]] == ["问题", "答", "再问"]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "更优", "loss_weight": 1.0}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "较差", "loss_weight": 1.0}]


def test_v1_text_parts_concatenate_and_a_tool_calls_part_becomes_tool_calls(tmp_path):
    call = {"name": "weather", "arguments": {"city": "北京"}}
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "value": "北京"}, {"type": "text", "text": "天气？"}],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_calls", "value": json.dumps(call, ensure_ascii=False)}],
            },
            {"role": "tool", "content": [{"type": "text", "value": '{"温度": 20}'}]},
            v1_turn("assistant", "20度。"),
        ]
    }
    rows, _ = load_dataset_rows(write_jsonl(tmp_path, [record]))
    messages = rows[0]["messages"]
    assert messages[0] == user("北京天气？")
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": call}],
    }
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("kind", ["image_url", "reasoning", "video_url"])
def test_non_text_content_parts_are_refused_naming_the_part(tmp_path, kind):
    record = {
        "messages": [
            {"role": "user", "content": [{"type": kind, "value": "x"}]},
            v1_turn("assistant", "a"),
        ]
    }
    path = write_jsonl(tmp_path, [record])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == (
        f"{path}:1: messages[0].content[0]: is a part of type {kind!r}; expected "
        '{"type": "text", "value": ...} (only text and tool_calls parts are supported)'
    )
    assert caught.value.reason == "unsupported content"


def test_value_parts_are_v1_text_parts_and_strings_are_the_messages_format():
    as_strings = {"messages": [user("q"), assistant("a")]}
    as_text_parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            assistant("a"),
        ]
    }
    as_value_parts = {"messages": [v1_turn("user", "q"), v1_turn("assistant", "a")]}
    weighted_strings = {"messages": [{**user("q"), "loss_weight": 0.0}, assistant("a")]}
    assert detect_format([as_strings]) == "messages"
    assert detect_format([as_text_parts]) == "messages"
    assert detect_format([weighted_strings]) == "messages"
    assert detect_format([as_value_parts]) == "llamafactory_v1"
    with pytest.raises(DataError, match=r"several formats \(llamafactory_v1 x1, messages x1\)"):
        detect_format([as_value_parts, as_strings])


def test_a_mixed_file_loads_when_the_format_is_named_and_keeps_loss_weights(tmp_path):
    records = [
        {"messages": [v1_turn("user", "q", 0.0), v1_turn("assistant", "a", 1.0)]},
        {"messages": [user("q2"), {**assistant("a2"), "loss_weight": 0}]},
    ]
    rows, report = load_dataset_rows(write_jsonl(tmp_path, records), format="messages")
    assert report.rows_emitted == 2
    assert rows[0]["messages"][1] == {"role": "assistant", "content": "a", "loss_weight": 1.0}
    assert rows[1]["messages"][1] == {"role": "assistant", "content": "a2", "loss_weight": 0.0}


def test_v1_messages_next_to_chosen_messages_is_ambiguous(tmp_path):
    record = {
        "messages": [v1_turn("user", "q")],
        "chosen_messages": [v1_turn("user", "q"), v1_turn("assistant", "a")],
        "rejected_messages": [v1_turn("user", "q"), v1_turn("assistant", "b")],
    }
    assert detect_format([record]) == "llamafactory_v1_pairwise"
    path = write_jsonl(tmp_path, [record])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == (
        f"{path}:1: messages: is given together with chosen_messages/rejected_messages; "
        "expected either messages (SFT) or chosen_messages and rejected_messages (preference)"
    )


def test_a_nan_loss_weight_is_refused_as_json_before_the_field_is_read(tmp_path):
    record = {"messages": [v1_turn("user", "q"), v1_turn("assistant", "a", float("nan"))]}
    path = write_jsonl(tmp_path, [record])  # json.dumps writes NaN, which is not JSON
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == (
        f"{path}:1: json: invalid JSON: NaN is not a JSON number (write null, or a finite number); "
        "expected one JSON object per line"
    )


@pytest.mark.parametrize(("weight", "shown"), [(-1, "-1"), (True, "True"), ("0.5", "'0.5'")])
def test_a_loss_weight_must_be_a_finite_number_at_least_zero(tmp_path, weight, shown):
    record = {"messages": [v1_turn("user", "q"), v1_turn("assistant", "a", weight)]}
    path = write_jsonl(tmp_path, [record])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == (
        f"{path}:1: messages[1].loss_weight: is {shown}; "
        "expected a finite number >= 0 (0 = context only, not trained on)"
    )


# ---- CSV cells holding JSON ----------------------------------------------------------------------


def test_csv_messages_cell_holding_json_loads_with_tools(tmp_path):
    tools = [{"name": "天气", "parameters": {}}]
    path = write_csv(tmp_path, ["messages", "tools"], [[user("你好"), assistant("你好！")], tools])
    rows, report = load_dataset_rows(path)
    assert report.format == "messages"
    assert rows == [{"messages": [user("你好"), assistant("你好！")], "tools": tools}]


def test_csv_sharegpt_conversations_cell(tmp_path):
    turns = [{"from": "human", "value": "q, with a comma"}, {"from": "gpt", "value": "a"}]
    path = write_csv(tmp_path, ["conversations", "system"], [turns, "be brief"])
    rows, report = load_dataset_rows(path)
    assert report.format == "sharegpt"
    assert rows[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        user("q, with a comma"),
        assistant("a"),
    ]


def test_csv_alpaca_history_cell(tmp_path):
    path = write_csv(
        tmp_path, ["instruction", "input", "output", "history"], ["i", "", "o", [["早", "Morning"]]]
    )
    rows, _ = load_dataset_rows(path)
    assert rows[0]["messages"] == [user("早"), assistant("Morning"), user("i"), assistant("o")]


@pytest.mark.parametrize(("column", "values"), [("rank", [2, 1, 3]), ("scores", [0.5, 0.9, 0.1])])
def test_csv_ranking_cells(tmp_path, column, values):
    path = write_csv(tmp_path, ["prompt", "responses", column], ["p", ["A", "B", "C"], values])
    rows, report = load_dataset_rows(path)
    assert report.format == "ranking"
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    assert pairs == {("B", "A"), ("B", "C"), ("A", "C")}


def test_csv_with_both_rank_and_scores_columns_uses_the_filled_one(tmp_path):
    path = write_csv(
        tmp_path, ["prompt", "responses", "rank", "scores"], ["p", ["A", "B"], "", [0.1, 0.9]]
    )
    rows, _ = load_dataset_rows(path)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("B", "A")]


def test_csv_implicit_preference_message_list_cells(tmp_path):
    path = write_csv(
        tmp_path,
        ["chosen", "rejected"],
        [[user("天空？"), assistant("蓝色")], [user("天空？"), assistant("绿色")]],
    )
    rows, report = load_dataset_rows(path)
    assert report.format == "preference"
    assert rows == [
        {"prompt": [user("天空？")], "chosen": [assistant("蓝色")], "rejected": [assistant("绿色")]}
    ]


def test_csv_explicit_preference_with_message_list_cells_and_text_that_looks_like_json(tmp_path):
    path = write_csv(
        tmp_path,
        ["prompt", "chosen", "rejected"],
        [[user("List two numbers as JSON")], [assistant("[1, 2]")], "[1, 2, 3]"],
        ["Give JSON", '{"a": 1}', '[{"name": "Bob"}]'],
    )
    rows, _ = load_dataset_rows(path)
    assert rows[0]["chosen"] == [assistant("[1, 2]")]
    # A text reply that happens to be JSON stays text: only {"role": ...} lists are messages.
    assert rows[0]["rejected"] == [assistant("[1, 2, 3]")]
    assert rows[1]["chosen"] == [assistant('{"a": 1}')]
    assert rows[1]["rejected"] == [assistant('[{"name": "Bob"}]')]


def test_csv_sharegpt_pairwise_reply_objects(tmp_path):
    path = write_csv(
        tmp_path,
        ["conversations", "chosen", "rejected"],
        [[{"from": "human", "value": "q"}], {"from": "gpt", "value": "good"}, "bad"],
    )
    rows, report = load_dataset_rows(path)
    assert report.format == "sharegpt_pairwise"
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ([assistant("good")], [assistant("bad")])


@pytest.mark.parametrize(("cell", "label"), [("true", True), ("FALSE", False), (" True ", True)])
def test_csv_unpaired_labels_spelled_as_text(tmp_path, cell, label):
    path = write_csv(tmp_path, ["prompt", "completion", "label"], ["p", "c", cell])
    rows, report = load_dataset_rows(path)
    assert report.format == "unpaired" and rows[0]["label"] is label


def test_csv_unpaired_messages_cell(tmp_path):
    path = write_csv(tmp_path, ["messages", "label"], [[user("q"), assistant("a")], "false"])
    rows, _ = load_dataset_rows(path)
    assert rows == [{"prompt": [user("q")], "completion": [assistant("a")], "label": False}]


def test_csv_llamafactory_v1_pairwise_cells(tmp_path):
    chosen = [v1_turn("user", "q", 0.0), v1_turn("assistant", "good", 1.0)]
    rejected = [v1_turn("user", "q", 0.0), v1_turn("assistant", "bad", 1.0)]
    path = write_csv(tmp_path, ["chosen_messages", "rejected_messages"], [chosen, rejected])
    rows, report = load_dataset_rows(path)
    assert report.format == "llamafactory_v1_pairwise"
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "good", "loss_weight": 1.0}]


def test_csv_v1_messages_cell_is_detected_as_v1(tmp_path):
    path = write_csv(tmp_path, ["messages"], [[v1_turn("user", "q"), v1_turn("assistant", "a")]])
    rows, report = load_dataset_rows(path)
    assert report.format == "llamafactory_v1"
    assert rows == [{"messages": [user("q"), assistant("a")]}]


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["messages"], ["hello"], "messages: is a str; expected a non-empty list of messages"),
        (
            ["messages"],
            ['{"role": "user", "content": "q"}'],
            "messages: is a str; expected a non-empty list of messages",
        ),
        (
            ["prompt", "responses", "rank"],
            ["p", '["A", "B"]', '{"A": 1}'],
            "rank: is '{\"A\": 1}'; expected a list of numbers, one per response",
        ),
        (
            ["instruction", "output", "history"],
            ["i", "o", "[[oops"],
            "history: is a str; expected a list of [user, assistant] pairs",
        ),
        (
            ["prompt", "completion", "label"],
            ["p", "c", "yes"],
            "label: is 'yes'; expected true or false",
        ),
    ],
)
def test_csv_cell_of_the_wrong_json_type_keeps_the_wrong_type_error(tmp_path, header, row, message):
    path = write_csv(tmp_path, header, row)
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == f"{path}:2: {message}"


# ---- role order that is fine -------------------------------------------------------------------


def test_system_turns_at_the_start_then_tool_round_trips_are_accepted(tmp_path):
    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]}
    record = {
        "messages": [
            {"role": "system", "content": "s1"},
            {"role": "system", "content": "s2"},
            user("q"),
            call,
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            assistant("done"),
            user("again"),
            call,
            {"role": "tool", "content": "3"},
            assistant("done again"),
        ]
    }
    rows, _ = load_dataset_rows(write_jsonl(tmp_path, [record]))
    assert [m["role"] for m in rows[0]["messages"]] == [
        "system", "system", "user", "assistant", "tool", "tool",
        "assistant", "user", "assistant", "tool", "assistant",
    ]  # fmt: skip


def test_a_preference_prompt_may_end_with_a_tool_result(tmp_path):
    prompt = [
        user("2+2?"),
        {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {}}]},
        {"role": "tool", "content": "4"},
    ]
    record = {"prompt": prompt, "chosen": "It is 4.", "rejected": "It is 5."}
    rows, _ = load_dataset_rows(write_jsonl(tmp_path, [record]))
    assert rows[0]["prompt"][-1]["role"] == "tool" and rows[0]["chosen"] == [assistant("It is 4.")]


def test_the_demo_sft_and_prompt_rows_load_unchanged(tmp_path):
    sft = list(sft_rows(seed=0, n=40, unsafe_fraction=0.3, heldout_fraction=0.2))
    rows, report = load_dataset_rows(write_jsonl(tmp_path, sft, "sft.jsonl"))
    assert (report.format, report.records_skipped) == ("messages", 0)
    assert [row["messages"] for row in rows] == [row["messages"] for row in sft]
    prompts = list(prompt_rows(seed=0, n=20, unsafe_fraction=0.3, heldout_fraction=0.2, salt=1))
    rows, report = load_dataset_rows(write_jsonl(tmp_path, prompts, "prompts.jsonl"))
    assert (report.format, report.records_skipped) == ("prompt", 0)
    assert [row["prompt"] for row in rows] == [row["prompt"] for row in prompts]
