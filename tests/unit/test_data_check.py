"""`alignflow data check`: a linter report that lists every problem and says whether the file is valid."""

from __future__ import annotations

import json
from pathlib import Path

from alignflow.data.check import check, percentiles, render

GOOD = {"instruction": "Say hi", "input": "", "output": "hi there"}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def word_tokenizer(directory: Path, chat_template: str | None) -> str:
    """A whitespace word tokenizer saved to disk: one token per word, no network needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_valid_file_reports_format_rows_and_a_normalized_preview(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD])
    report = check(path)
    assert report.ok and report.exit_code == 0
    assert (report.format, report.kind, report.records_read, report.rows) == ("alpaca", "sft", 2, 2)
    assert report.problems == []
    assert report.preview == {
        "messages": [
            {"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "hi there"},
        ]
    }
    text = render(report)
    assert "alpaca (sft rows)" in text and "problems: none" in text and text.endswith("OK")


def test_invalid_file_lists_every_bad_record_and_exits_2(tmp_path):
    bad_role = {"messages": [{"role": "bot", "content": "x"}]}
    records = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        bad_role,
        {"messages": [{"role": "user", "content": ""}]},
        bad_role,
    ]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    report = check(path, format="messages")
    assert not report.ok and report.exit_code == 2
    assert report.rows == 1 and report.records_read == 4
    assert report.problems == [
        f"{path}:2: messages[0].role: unknown role 'bot'; expected one of system, user, assistant, tool",
        f"{path}:3: messages[0].content: is empty; expected non-empty text",
        f"{path}:4: messages[0].role: unknown role 'bot'; expected one of system, user, assistant, tool",
    ]
    text = render(report)
    assert "problems: 3" in text and report.problems[1] in text and "INVALID" in text


def test_unreadable_or_unrecognized_file_is_one_problem_not_a_crash(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"foo": 1}])
    report = check(path)
    assert not report.ok and report.format is None
    assert (
        len(report.problems) == 1 and "no known format matches keys ['foo']" in report.problems[0]
    )
    missing = check(tmp_path / "missing.json")
    assert missing.exit_code == 2 and "does not exist" in missing.problems[0]


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentiles(values) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}


def test_token_lengths_join_contents_without_a_chat_template(tmp_path):
    records = [GOOD, {"instruction": "one two three", "input": "four", "output": "five six"}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    report = check(path, tokenizer=word_tokenizer(tmp_path / "tok", None))
    # "Say hi\nhi there" = 4 words; "one two three\nfour\nfive six" = 6 words.
    assert report.token_lengths == {"p50": 4, "p90": 6, "p99": 6, "max": 6}
    assert any("no chat template" in note for note in report.notes)
    assert report.ok


def test_token_lengths_use_the_chat_template_when_there_is_one(tmp_path):
    template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    report = check(path, tokenizer=word_tokenizer(tmp_path / "tok", template))
    # "<user> Say hi <assistant> hi there" = 6 words: the template's role markers count.
    assert report.token_lengths == {"p50": 6, "p90": 6, "p99": 6, "max": 6}
    assert "tokens:   p50 6" in render(report)


def test_preference_rows_are_measured_as_prompt_plus_each_response(tmp_path):
    record = {"prompt": "a b", "chosen": "c", "rejected": "d e f"}
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    report = check(path, tokenizer=word_tokenizer(tmp_path / "tok", None))
    # prompt+chosen = 3 tokens, prompt+rejected = 5 tokens.
    assert report.token_lengths == {"p50": 3, "p90": 5, "p99": 5, "max": 5}
    assert report.preview is not None and report.preview["rejected"][0]["content"] == "d e f"
