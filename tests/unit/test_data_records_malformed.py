"""A corpus of malformed records: each raises one exact line, or with on_error="skip" is counted
under its reason while the valid records around it still load."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from alignflow.data.errors import DataError
from alignflow.data.load import load_dataset_rows

ORDER = "alternating user/assistant turns after an optional system turn"


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def v1(role: str, text: str, weight: float = 0.0) -> dict:
    return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": weight}


CALL = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]}

# One valid record per format: the neighbours every bad record is written between.
GOOD = {
    "alpaca": {"instruction": "i", "input": "", "output": "o"},
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    "messages": {"messages": [u("q"), a("a")]},
    "llamafactory_v1": {"messages": [v1("user", "q"), v1("assistant", "a", 1.0)]},
    "llamafactory_v1_pairwise": {
        "chosen_messages": [v1("user", "q"), v1("assistant", "good", 1.0)],
        "rejected_messages": [v1("user", "q"), v1("assistant", "bad", 1.0)],
    },
    "sharegpt_pairwise": {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    },
    "preference": {"prompt": "p", "chosen": "good", "rejected": "bad"},
    "hh_rlhf": {
        "chosen": "\n\nHuman: q\n\nAssistant: good",
        "rejected": "\n\nHuman: q\n\nAssistant: bad",
    },
    "ranking": {"prompt": "p", "responses": ["a", "b", "c"], "rank": [1, 2, 3]},
    "unpaired": {"prompt": "p", "completion": "c", "label": True},
    "classification": {"text": "t", "label": "spam"},
    "prompt": {"prompt": "p"},
}

# (format of the neighbours, bad record, exact "field: problem; expected ...", skip reason)
CORPUS = [
    # ---- wrong types
    (
        "alpaca",
        {"instruction": 5, "output": "o"},
        "instruction: is an int; expected a string",
        "wrong type",
    ),
    (
        "messages",
        {"messages": "hello"},
        "messages: is a str; expected a non-empty list of messages",
        "wrong type",
    ),
    (
        "messages",
        {"messages": [u("q"), "a"]},
        'messages[1]: is a str; expected {"role": ..., "content": ...}',
        "wrong type",
    ),
    (
        "alpaca",
        {"instruction": "i", "output": "o", "history": {"q": "a"}},
        "history: is a dict; expected a list of [user, assistant] pairs",
        "wrong type",
    ),
    (
        "ranking",
        {"prompt": "p", "responses": ["a", "b"], "scores": ["1", "2"]},
        "scores: is ['1', '2']; expected a list of numbers, one per response",
        "wrong type",
    ),
    (
        "unpaired",
        {"prompt": "p", "completion": "c", "label": "maybe"},
        "label: is 'maybe'; expected true or false",
        "wrong type",
    ),
    (
        "classification",
        {"text": "t", "label": 1.5},
        "label: is 1.5; expected a class name or number "
        "(a true/false label with prompt/completion is the unpaired format)",
        "wrong type",
    ),
    (
        "llamafactory_v1",
        {"messages": [v1("user", "q"), v1("assistant", "a", -0.5)]},
        "messages[1].loss_weight: is -0.5; "
        "expected a finite number >= 0 (0 = context only, not trained on)",
        "bad loss weight",
    ),
    (
        "llamafactory_v1",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "value": "cat.png"}]},
                v1("assistant", "a"),
            ]
        },
        'messages[0].content[0]: is a part of type \'image_url\'; expected {"type": "text", '
        '"value": ...} (only text and tool_calls parts are supported)',
        "unsupported content",
    ),
    (
        "messages",
        {"messages": [u("q"), a("a")], "tools": "{not json"},
        "tools: is not valid JSON (Expecting property name enclosed in double quotes); "
        "expected a JSON list of tool schemas",
        "bad tools",
    ),
    # ---- missing fields
    (
        "alpaca",
        {"instruction": "i", "output": None},
        "output: is missing; expected an 'output' field",
        "missing field",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": "good"},
        "rejected: is missing; expected a 'rejected' field",
        "missing field",
    ),
    (
        "llamafactory_v1_pairwise",
        {"chosen_messages": [v1("user", "q"), v1("assistant", "good", 1.0)]},
        "rejected_messages: is missing; expected a 'rejected_messages' field",
        "missing field",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]},
        "conversations[0].value: is a NoneType; expected a string",
        "wrong type",
    ),
    # ---- empty strings
    (
        "alpaca",
        {"instruction": "", "output": "o"},
        "instruction: is empty; expected non-empty text",
        "empty text",
    ),
    (
        "classification",
        {"text": "", "label": "spam"},
        "text: is empty; expected non-empty text",
        "empty text",
    ),
    (
        "llamafactory_v1",
        {"messages": [v1("user", ""), v1("assistant", "a", 1.0)]},
        "messages[0].content: is empty; expected non-empty text",
        "empty text",
    ),
    # ---- whitespace-only text
    (
        "preference",
        {"prompt": " \t\n", "chosen": "good", "rejected": "bad"},
        "prompt: is whitespace-only; expected non-empty text",
        "empty text",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "\u3000 "}]},
        "conversations[1].value: is whitespace-only; expected non-empty text",
        "empty text",
    ),
    (
        "classification",
        {"text": "t", "label": "  "},
        "label: is whitespace-only; expected non-empty text",
        "empty text",
    ),
    # ---- unknown role
    (
        "messages",
        {"messages": [u("q"), {"role": "bot", "content": "a"}]},
        "messages[1].role: unknown role 'bot'; expected one of system, user, assistant, tool",
        "unknown role",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
        "conversations[1].from: unknown role 'robot'; expected one of human, user, gpt, "
        "assistant, system, function_call, observation",
        "unknown role",
    ),
    (
        "llamafactory_v1",
        {"messages": [v1("user", "q"), v1("model", "a", 1.0)]},
        "messages[1].role: unknown role 'model'; expected one of system, user, assistant, tool",
        "unknown role",
    ),
    # ---- wrong role order
    (
        "messages",
        {"messages": [u("q"), u("q again"), a("a")]},
        f"messages[1].role: is 'user' after 'user'; expected {ORDER}",
        "wrong role order",
    ),
    (
        "messages",
        {"messages": [u("q"), a("a"), a("a again")]},
        f"messages[2].role: is 'assistant' after 'assistant'; expected {ORDER}",
        "wrong role order",
    ),
    (
        "messages",
        {"messages": [{"role": "system", "content": "s"}, a("hello"), u("q"), a("a")]},
        f"messages[1].role: is 'assistant' before any user turn; expected {ORDER}",
        "wrong role order",
    ),
    (
        "messages",
        {"messages": [u("q"), a("a"), {"role": "system", "content": "s"}, u("q"), a("a")]},
        "messages[2].role: is 'system' after 'assistant'; expected system turns only at the start",
        "wrong role order",
    ),
    (
        "messages",
        {"messages": [u("q"), a("a"), u("q again")]},
        "messages[2].role: is 'user' at the end; "
        "expected a conversation ending with an assistant turn",
        "wrong role order",
    ),
    (
        "messages",
        {"messages": [u("q"), {"role": "tool", "content": "42"}, a("a")]},
        "messages[1].role: is 'tool' after 'user'; "
        "expected a tool turn right after an assistant turn with tool_calls",
        "wrong role order",
    ),
    (
        "messages",
        {"messages": [u("q"), a("let me look"), {"role": "tool", "content": "42"}, a("a")]},
        "messages[2].role: is 'tool' after 'assistant'; "
        "expected a tool turn right after an assistant turn with tool_calls",
        "wrong role order",
    ),
    (
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
                {"from": "observation", "value": "42"},
                {"from": "gpt", "value": "b"},
            ]
        },
        "conversations[2].from: is 'observation' after 'gpt'; "
        "expected a tool turn right after an assistant turn with tool_calls",
        "wrong role order",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}]},
        f"conversations[0].from: is 'gpt' before any user turn; expected {ORDER}",
        "wrong role order",
    ),
    (
        "preference",
        {"prompt": [u("q"), a("a")], "chosen": "good", "rejected": "bad"},
        "prompt[1].role: is 'assistant' at the end; "
        "expected a prompt ending with a user (or tool) turn",
        "wrong role order",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": [u("more?"), a("good")], "rejected": "bad"},
        "chosen[0].role: is 'user'; expected a reply starting with an assistant turn",
        "wrong role order",
    ),
    (
        "preference",
        {
            "chosen": [u("q"), a("a"), u("x"), a("good")],
            "rejected": [u("q"), a("a"), u("y"), a("bad")],
        },
        "chosen[2].role: is 'user' where chosen and rejected first differ; "
        "expected the two to differ from an assistant reply on, after a shared prompt",
        "wrong role order",
    ),
    (
        "sharegpt_pairwise",
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "human", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        "chosen.from: is 'human'; expected a reply starting with an assistant turn",
        "wrong role order",
    ),
    (
        "hh_rlhf",
        {
            "chosen": "\n\nHuman: q\n\nHuman: q2\n\nAssistant: good",
            "rejected": "\n\nHuman: q\n\nAssistant: bad",
        },
        f"chosen (turn 2, Human): is 'user' after 'user'; expected {ORDER}",
        "wrong role order",
    ),
    (
        "llamafactory_v1_pairwise",
        {
            "chosen_messages": [v1("user", "q"), v1("assistant", "good", 1.0), v1("user", "x")],
            "rejected_messages": [v1("user", "q"), v1("assistant", "bad", 1.0)],
        },
        "chosen_messages[2].role: is 'user' at the end; "
        "expected a conversation ending with an assistant turn",
        "wrong role order",
    ),
    (
        "unpaired",
        {"messages": [u("q"), u("q again"), a("a")], "label": True},
        f"messages[1].role: is 'user' after 'user'; expected {ORDER}",
        "wrong role order",
    ),
    (
        "prompt",
        {"prompt": [u("q"), a("a")]},
        "prompt[1].role: is 'assistant' at the end; "
        "expected a prompt ending with a user (or tool) turn",
        "wrong role order",
    ),
    # ---- chosen identical to rejected
    (
        "preference",
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        "chosen: is identical to rejected; expected two different responses",
        "chosen == rejected",
    ),
    (
        "sharegpt_pairwise",
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": "same"},
            "rejected": "same",
        },
        "chosen: is identical to rejected; expected two different responses",
        "chosen == rejected",
    ),
    (
        "llamafactory_v1_pairwise",
        {
            "chosen_messages": [v1("user", "q"), v1("assistant", "same", 1.0)],
            "rejected_messages": [v1("user", "q"), v1("assistant", "same", 1.0)],
        },
        "chosen_messages: is identical to rejected_messages; expected two different responses",
        "chosen == rejected",
    ),
    # ---- ranking length != responses
    (
        "ranking",
        {"prompt": "p", "responses": ["a", "b", "c"], "rank": [1, 2]},
        "rank: has 2 entries but responses has 3; expected one entry per response",
        "ranking length mismatch",
    ),
    (
        "ranking",
        {"prompt": "p", "responses": ["a", "b"], "scores": [0.1, 0.2, 0.3]},
        "scores: has 3 entries but responses has 2; expected one entry per response",
        "ranking length mismatch",
    ),
]

IDS = [f"{i:02d}-{fmt}-{reason.replace(' ', '_')}" for i, (fmt, _, _, reason) in enumerate(CORPUS)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("fmt", "record", "message", "reason"), CORPUS, ids=IDS)
def test_malformed_record_raises_its_exact_one_line_message(tmp_path, fmt, record, message, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[fmt], record, GOOD[fmt]])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == f"{path}:2: {message}"
    assert caught.value.reason == reason


@pytest.mark.parametrize(("fmt", "record", "message", "reason"), CORPUS, ids=IDS)
def test_malformed_record_is_skipped_and_counted_while_neighbours_load(
    tmp_path, fmt, record, message, reason
):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[fmt], GOOD[fmt], record, GOOD[fmt]])
    rows, report = load_dataset_rows(path, on_error="skip")
    good_rows, _ = load_dataset_rows(write_jsonl(tmp_path / "good.jsonl", [GOOD[fmt]]))
    assert report.format == fmt
    assert rows == good_rows * 3
    assert report.records_read == 4 and report.rows_emitted == len(rows)
    assert report.skipped == Counter({reason: 1})
    assert report.problems == [f"{path}:3: {message}"]


def test_every_format_has_a_malformed_record_in_the_corpus():
    assert {fmt for fmt, *_ in CORPUS} == set(GOOD)


# ---- the same through CSV, where line numbers count the header ------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


CSV_CORPUS = [
    (
        ["prompt", "completion", "label"],
        ["p", "c", "yes"],
        "label: is 'yes'; expected true or false",
        "wrong type",
    ),
    (
        ["prompt", "chosen", "rejected"],
        ["p", "same", "same"],
        "chosen: is identical to rejected; expected two different responses",
        "chosen == rejected",
    ),
    (
        ["prompt", "responses", "rank"],
        ["p", '["a", "b", "c"]', "[1, 2]"],
        "rank: has 2 entries but responses has 3; expected one entry per response",
        "ranking length mismatch",
    ),
    (
        ["messages"],
        ['[{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]'],
        f"messages[1].role: is 'user' after 'user'; expected {ORDER}",
        "wrong role order",
    ),
    (
        ["text", "label"],
        ["   ", "spam"],
        "text: is whitespace-only; expected non-empty text",
        "empty text",
    ),
]

CSV_GOOD = {
    ("prompt", "completion", "label"): ["p", "c", "TRUE"],
    ("prompt", "chosen", "rejected"): ["p", "good", "bad"],
    ("prompt", "responses", "rank"): ["p", '["a", "b"]', "[2, 1]"],
    ("messages",): ['[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'],
    ("text", "label"): ["hello, world", "ham"],
}


@pytest.mark.parametrize(("header", "bad", "message", "reason"), CSV_CORPUS)
def test_malformed_csv_row_raises_or_is_skipped_by_line(tmp_path, header, bad, message, reason):
    good = CSV_GOOD[tuple(header)]
    path = write_csv(tmp_path / "d.csv", header, [good, bad, good])
    with pytest.raises(DataError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == f"{path}:3: {message}"  # line 1 is the header
    rows, report = load_dataset_rows(path, on_error="skip")
    good_rows, _ = load_dataset_rows(write_csv(tmp_path / "good.csv", header, [good]))
    assert rows == good_rows * 2 and report.rows_emitted == 2
    assert report.skipped == Counter({reason: 1}) and report.records_read == 3
    assert report.problems == [f"{path}:3: {message}"]
