"""Properties of the normalizers over generated records: unicode text survives untouched, sharegpt
round-trips, rankings give every pair exactly once, implicit prompts reconstruct both sides, and a
column mapping is invisible in the output."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.data import normalizers
from alignflow.data.formats import FORMATS, detect_format
from alignflow.data.mapping import ColumnMapping

# Fast and the same on every run.
FAST = settings(max_examples=40, derandomize=True, deadline=None, database=None)

# Any unicode text (CJK spelled out so it is always well covered) that is not blank.
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
TEXT = st.one_of(st.text(min_size=1, max_size=12), st.text(CJK, min_size=1, max_size=8)).filter(
    str.strip
)
SPEAKERS = {"user": "human", "assistant": "gpt"}


def exchanges(min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[list[dict]]:
    """Alternating user/assistant messages, `min_size`..`max_size` exchanges long."""
    pairs = st.lists(st.tuples(TEXT, TEXT), min_size=min_size, max_size=max_size)
    return pairs.map(
        lambda pairs: [
            message
            for question, answer in pairs
            for message in (
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            )
        ]
    )


@FAST
@given(instruction=TEXT, output=TEXT)
def test_any_alpaca_record_becomes_exactly_its_user_and_assistant_texts(instruction, output):
    record = {"instruction": instruction, "input": "", "output": output}
    assert detect_format([record]) == "alpaca"
    assert normalizers.alpaca(record, Counter()) == [
        {
            "messages": [
                {"role": "user", "content": instruction},
                {"role": "assistant", "content": output},
            ]
        }
    ]


@FAST
@given(messages=exchanges(), system=st.one_of(st.none(), TEXT))
def test_sharegpt_round_trips_to_the_same_turns(messages, system):
    turns = [{"from": SPEAKERS[m["role"]], "value": m["content"]} for m in messages]
    record = {"conversations": turns, **({"system": system} if system else {})}
    (row,) = normalizers.sharegpt(record, Counter())
    head = [{"role": "system", "content": system}] if system else []
    assert row["messages"][: len(head)] == head
    body = row["messages"][len(head) :]
    assert [{"from": SPEAKERS[m["role"]], "value": m["content"]} for m in body] == turns


@FAST
@given(messages=exchanges())
def test_messages_and_llamafactory_v1_parts_give_the_same_row(messages):
    v1 = [{**m, "content": [{"type": "text", "value": m["content"]}]} for m in messages]
    assert detect_format([{"messages": v1}]) == "llamafactory_v1"
    assert normalizers.messages_sft({"messages": v1}, Counter()) == [{"messages": messages}]
    assert normalizers.messages_sft({"messages": messages}, Counter()) == [{"messages": messages}]


@FAST
@given(scores=st.lists(st.integers(0, 3), min_size=2, max_size=7), use_rank=st.booleans())
def test_a_ranking_gives_one_pair_or_tie_per_two_responses_each_agreeing_with_the_scores(
    scores, use_rank
):
    responses = [f"response {i}" for i in range(len(scores))]
    # rank: 1 = best, so the same order is written as negated scores.
    key = {"rank": [-s for s in scores]} if use_rank else {"scores": scores}
    stats: Counter = Counter()
    rows = normalizers.ranking({"prompt": "p", "responses": responses, **key}, stats)
    n = len(scores)
    assert len(rows) + stats["ties_skipped"] == n * (n - 1) // 2
    score = dict(zip(responses, scores, strict=True))
    pairs = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    assert all(score[chosen] > score[rejected] for chosen, rejected in pairs)
    assert len(set(pairs)) == len(pairs)
    assert stats["ties_skipped"] == sum(
        scores[i] == scores[j] for i in range(n) for j in range(i + 1, n)
    )


@FAST
@given(
    history=exchanges(min_size=0, max_size=3),
    question=TEXT,
    chosen=exchanges(min_size=0, max_size=2),
    replies=st.lists(TEXT, min_size=2, max_size=2, unique=True),
)
def test_implicit_preference_prompt_plus_each_side_reconstructs_it(
    history, question, chosen, replies
):
    prompt = [*history, {"role": "user", "content": question}]
    # Each side: its own first reply; chosen may go on for more exchanges.
    chosen_side = [*prompt, {"role": "assistant", "content": replies[0]}, *chosen]
    rejected_side = [*prompt, {"role": "assistant", "content": replies[1]}]
    record = {"chosen": chosen_side, "rejected": rejected_side}
    assert detect_format([record]) == "preference"
    (row,) = normalizers.preference(record, Counter())
    assert row["prompt"] == prompt
    assert row["prompt"] + row["chosen"] == chosen_side
    assert row["prompt"] + row["rejected"] == rejected_side


@FAST
@given(instruction=TEXT, extra=TEXT, output=TEXT, system=TEXT)
def test_renamed_columns_mapped_back_give_the_same_rows(instruction, extra, output, system):
    original = {"instruction": instruction, "input": extra, "output": output, "system": system}
    renamed = {"question": instruction, "context": extra, "answer": output, "persona": system}
    mapping = ColumnMapping(
        columns={
            "instruction": "question",
            "input": "context",
            "output": "answer",
            "system": "persona",
        }
    )
    mapped = mapping.apply(renamed)
    assert detect_format([mapped]) == detect_format([original]) == "alpaca"
    assert normalizers.alpaca(mapped, Counter()) == normalizers.alpaca(original, Counter())


@FAST
@given(messages=exchanges())
def test_renamed_message_keys_and_roles_mapped_back_give_the_same_rows(messages):
    speaker = {"user": "customer", "assistant": "agent"}
    renamed = {"dialog": [{"speaker": speaker[m["role"]], "text": m["content"]} for m in messages]}
    mapping = ColumnMapping(
        columns={"messages": "dialog"},
        message_keys={"role": "speaker", "content": "text"},
        roles={"user": "customer", "assistant": "agent"},
    )
    mapped = mapping.apply(renamed)
    assert detect_format([mapped]) == "messages"
    assert normalizers.messages_sft(mapped, Counter()) == [{"messages": messages}]


@FAST
@given(
    word=st.sampled_from(["true", "false"]), flips=st.lists(st.booleans(), min_size=5, max_size=5)
)
def test_csv_boolean_labels_in_any_case_read_as_bools(word, flips):
    cell = "".join(c.upper() if flip else c for c, flip in zip(word, flips, strict=False))
    (row,) = normalizers.unpaired({"prompt": "p", "completion": "c", "label": cell}, Counter())
    assert row["label"] is (word == "true")


@FAST
@given(text=TEXT, label=st.one_of(TEXT, st.integers(-5, 5)))
def test_classification_puts_the_text_in_the_prompt_and_the_label_in_the_reply(text, label):
    record = {"text": text, "label": label}
    assert detect_format([record]) == "classification"
    (row,) = FORMATS["classification"].normalize(record, Counter())
    user, assistant = row["messages"]
    assert text in user["content"] and user["role"] == "user"
    assert assistant == {"role": "assistant", "content": str(label)}
