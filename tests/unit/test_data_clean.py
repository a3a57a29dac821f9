import random
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from alignflow.data.clean import (
    REASONS,
    CleanSettings,
    NearDupIndex,
    clean,
    row_digest,
    row_text,
    split_of,
)

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "brew",
    "potent",
    "coffee",
    "beside",
    "an",
    "old",
    "river",
    "under",
    "bright",
    "autumn",
    "stars",
    "near",
    "the",
    "mountain",
    "village",
    "gate",
]


def sft(user: str, assistant: str = "ok") -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def numbered_rows(count: int, start: int = 0) -> list[dict]:
    return [sft(f"question number {i}", f"answer {i}") for i in range(start, start + count)]


# ---- splits -----------------------------------------------------------------------------------


def test_split_is_deterministic():
    rows = numbered_rows(50)
    assert [split_of(r, 0.3) for r in rows] == [split_of(r, 0.3) for r in rows]


def test_split_fraction_roughly_matches_eval_fraction_on_2000_rows():
    rows = numbered_rows(2000)
    share = sum(split_of(r, 0.2) == "eval" for r in rows) / len(rows)
    assert abs(share - 0.2) <= 0.03


def test_old_rows_keep_their_split_when_rows_are_added_and_shuffled():
    old = numbered_rows(1000)
    before = {row_digest(r): split_of(r, 0.1) for r in old}
    grown = old + numbered_rows(1000, start=1000)
    random.Random(0).shuffle(grown)
    after = {row_digest(r): split_of(r, 0.1) for r in grown}
    assert all(after[key] == split for key, split in before.items())


def test_salt_changes_the_split():
    rows = numbered_rows(200)
    assert [split_of(r, 0.5) for r in rows] != [split_of(r, 0.5, salt="v2") for r in rows]


def test_split_rejects_a_fraction_outside_unit_interval():
    try:
        split_of(sft("hi"), 1.5)
    except ValueError as error:
        assert "eval_fraction" in str(error)
    else:
        raise AssertionError("expected ValueError")


messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text()}),
    min_size=1,
    max_size=3,
)


@given(row=st.fixed_dictionaries({"prompt": messages, "chosen": messages, "rejected": messages}))
def test_split_and_digest_ignore_dict_key_order(row):
    def reversed_keys(value):
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reversed_keys(v) for v in value]
        return value

    shuffled = reversed_keys(row)
    assert list(shuffled) != list(row)
    assert row_digest(shuffled) == row_digest(row)
    assert split_of(shuffled, 0.5, salt="s") == split_of(row, 0.5, salt="s")
    assert row_text(shuffled) == row_text(row)


# One step of the cleaning pass at a time: every other step off (min_chars stays 1).
NO_STEP = CleanSettings(exact_dedup=False, near_threshold=None)


def only(rows, eval_rows=(), length_fn=None, **step):
    """(kept rows, removed count) of `clean` with just the step `step` turns on."""
    kept, report = clean(rows, replace(NO_STEP, **step), eval_rows, length_fn)
    return kept, report.rows_in - report.rows_out


# ---- duplicates -------------------------------------------------------------------------------


def test_exact_dedup_removes_identical_rows_only():
    a, b = sft("hello there"), sft("hello there!")
    a_reordered = {"messages": [{"content": "hello there", "role": "user"}, a["messages"][1]]}
    kept, removed = only([a, b, dict(a), a_reordered], exact_dedup=True)
    assert kept == [a, b]
    assert removed == 2


def thirty_words(seed: int) -> list[str]:
    return random.Random(seed).choices(WORDS, k=30)


def test_near_dedup_removes_a_one_word_edit_and_keeps_a_different_text():
    base = thirty_words(1)
    edited = list(base)
    edited[15] = "zebra"
    different = thirty_words(2)
    rows = [sft(" ".join(base)), sft(" ".join(edited)), sft(" ".join(different))]
    kept, removed = only(rows, near_threshold=0.7, shingle=3)
    assert kept == [rows[0], rows[2]]
    assert removed == 1


def test_near_dedup_default_settings_catch_a_one_word_edit_in_a_long_text():
    base = thirty_words(3) + thirty_words(4) + thirty_words(5)
    edited = list(base)
    edited[-1] = "zebra"
    kept, removed = only([sft(" ".join(base)), sft(" ".join(edited))], near_threshold=0.8)
    assert removed == 1 and len(kept) == 1


def test_near_dedup_works_on_chinese_text_without_spaces():
    text = "今天天气很好我们一起去公园散步然后在湖边喝茶聊天看看远处的山和天上的云彩心情非常愉快"
    edited = text.replace("喝茶", "喝酒")
    other = "机器学习模型需要大量的数据来训练并且要仔细评估它在新数据上的表现是否稳定可靠和公平"
    rows = [sft(text), sft(edited), sft(other)]
    kept, removed = only(rows, near_threshold=0.7, shingle=3)
    assert kept == [rows[0], rows[2]]
    assert removed == 1


def test_near_dup_index_keeps_text_without_words():
    index = NearDupIndex()
    assert index.add("") and index.add("!!!")
    assert len(index) == 0


# ---- filters ----------------------------------------------------------------------------------


def test_length_filter_counts_short_and_long_rows():
    rows = [sft("a"), sft("b" * 50), sft("c" * 500)]
    lengths = [len(row_text(r)) for r in rows]
    kept, removed = only(rows, max_chars=lengths[1], min_chars=lengths[1])
    assert kept == [rows[1]]
    assert removed == 2


def test_length_filter_uses_length_fn_for_token_counts():
    rows = [sft("one two three"), sft("one two three four five six seven eight")]
    kept, removed = only(rows, length_fn=lambda text: len(text.split()), max_chars=8)
    assert kept == [rows[0]]
    assert removed == 1


EVAL_PROMPT = "please explain why the sky looks blue during a clear summer afternoon today"


def test_overlap_filter_drops_a_training_row_sharing_an_8gram_with_an_eval_prompt():
    eval_rows = [{"prompt": [{"role": "user", "content": EVAL_PROMPT}]}]
    eight = " ".join(EVAL_PROMPT.split()[2:10])
    seven = " ".join(EVAL_PROMPT.split()[2:9])
    shares_8 = sft(f"Tell me: {eight}.", "Rayleigh scattering.")
    shares_7 = sft(f"Tell me: {seven} and more.", "Rayleigh scattering.")
    kept, removed = only([shares_8, shares_7], eval_rows, overlap_n=8)
    assert kept == [shares_7]
    assert removed == 1


def test_overlap_filter_accepts_plain_prompt_strings_and_sft_eval_rows():
    train = [sft(EVAL_PROMPT), sft("something else entirely")]
    assert only(train, [EVAL_PROMPT])[1] == 1
    assert only(train, [sft(EVAL_PROMPT, "an answer")])[1] == 1
    # the eval row's answer is not its prompt, so it never causes removals
    assert only(train, [sft("short", EVAL_PROMPT)])[1] == 0


# ---- the whole pass ---------------------------------------------------------------------------


def test_clean_report_counts_each_reason_and_adds_up():
    near_base = " ".join(thirty_words(7) * 3)
    rows = [
        sft("hello world"),
        sft("hello world"),  # duplicate_exact
        sft(near_base),
        sft(near_base + " extra"),  # duplicate_near
        sft("x" * 2000),  # too_long
        sft(""),  # too_short (only role labels remain)
        sft(EVAL_PROMPT),  # eval_overlap
        sft("a perfectly fine training example"),
    ]
    min_chars = len(row_text(sft(""))) + 1
    cfg = CleanSettings(max_chars=1000, min_chars=min_chars)
    kept, report = clean(rows, cfg, eval_rows=[EVAL_PROMPT])
    assert kept == [rows[0], rows[2], rows[7]]
    assert dict(report.removed) == dict.fromkeys(REASONS, 1)
    assert report.rows_in == 8 and report.rows_out == 3
    assert report.rows_in == report.rows_out + sum(report.removed.values())
    assert "removed (duplicate_near): 1" in report.lines()


def test_clean_settings_are_frozen_and_validated():
    cfg = CleanSettings()
    try:
        cfg.max_chars = 5  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("CleanSettings should be frozen")
    try:
        CleanSettings(max_chars=1, min_chars=10)
    except ValueError as error:
        assert "max_chars" in str(error)
    else:
        raise AssertionError("expected ValueError")


def test_clean_with_near_dedup_off_keeps_near_duplicates():
    text = " ".join(thirty_words(8) * 3)
    kept, report = clean([sft(text), sft(text + " extra")], CleanSettings(near_threshold=None))
    assert len(kept) == 2
    assert report.removed["duplicate_near"] == 0
