"""The llm_judge's pure parts: reading a verdict, combining the two orders, Copeland scores,
prompt rendering, the API key rule and the rate limiter. No server."""

from __future__ import annotations

import pytest

from alignflow.config import LLMJudgeConfig
from alignflow.feedback.llm_judge import (
    LOCAL_PLACEHOLDER_KEY,
    MinIntervalLimiter,
    combine_orders,
    copeland_scores,
    parse_verdict,
    render_conversation,
    render_prompt,
    resolve_api_key,
)
from alignflow.feedback.records import scores_to_ranking

A_ANSWERS = [
    "A",
    "a",
    " A\n",
    "A.",
    "**A**",
    "`A`",
    "(A)",
    "Response A",
    "response a.",
    "**Response A**",
    "[[A]]",
    "My verdict: [[A]]",
    "Answer: A",
    "answer:a",
    "Final answer: **Response A**",
    "Verdict - A",
    "Option A",
    "A, because it answers the question.",
    "A is better.",
    "Response A is better than Response B.",
    "I prefer Response A; B rambles.",
    "After careful thought, Response A.",
    "## Verdict\nA",
    "The winner: A",
    "A\n\nExplanation: Response B is too short.",
    "Let me compare.\nResponse B is vaguer.\n**A**",
]
B_ANSWERS = [
    "B",
    "b",
    "B!",
    "__B__",
    "Response B",
    "[[B]]",
    "[[ B ]]",
    "Answer: B",
    "ANSWER: RESPONSE B",
    "Preferred: B",
    "B is more helpful",
    "Clearly Assistant B gives the better answer",
]
TIE_ANSWERS = [
    "TIE",
    "tie",
    "Tie.",
    "**TIE**",
    "[[C]]",
    "[[TIE]]",
    "Answer: tie",
    "Equal",
    "They are equally good.",
    "It's a tie",
    "Response A and Response B are equally helpful.",
    "draw",
]
UNPARSABLE = [
    "",
    None,
    "   ",
    "The Nimbus lamp is great. I love",
    "A good answer would mention the price.",
    "I cannot decide.",
    "Neither",
    "C",
    "AB",
    "A or B",
    "Response A ... Response B",
    "[[A]] [[B]]",
    "Answer: A. Answer: B.",
    "A is better. No wait, B is better.",
    "Both responses have merit.",
    "a lamp",
    "B\nA",
    "\n\n",
]


@pytest.mark.parametrize("text", A_ANSWERS)
def test_answers_naming_a_parse_as_a(text):
    assert parse_verdict(text) == "A"


@pytest.mark.parametrize("text", B_ANSWERS)
def test_answers_naming_b_parse_as_b(text):
    assert parse_verdict(text) == "B"


@pytest.mark.parametrize("text", TIE_ANSWERS)
def test_tie_and_equal_parse_as_tie(text):
    assert parse_verdict(text) == "TIE"


@pytest.mark.parametrize("text", UNPARSABLE)
def test_unparsable_or_ambiguous_answers_give_none(text):
    assert parse_verdict(text) is None


def test_an_explicit_bracketed_verdict_outranks_prose():
    assert parse_verdict("Response A is shorter, Response B is wrong. [[A]]") == "A"


# combine_orders: forward shows (i, j) as (A, B), backward shows (j, i) as (A, B).
@pytest.mark.parametrize(
    ("forward", "backward", "expected"),
    [
        ("A", "B", (0, False)),  # both orders pick candidate 0
        ("B", "A", (1, False)),  # both orders pick candidate 1
        ("TIE", "TIE", ("tie", False)),
        ("A", "A", ("tie", True)),  # always the first shown: position bias
        ("B", "B", ("tie", True)),  # always the second shown
        ("A", "TIE", ("tie", True)),  # a win one way, a tie the other
        ("A", None, (None, False)),  # one order alone is not trusted
        (None, "B", (None, False)),
        (None, None, (None, False)),
    ],
)
def test_two_orders_combine_into_one_pair_outcome(forward, backward, expected):
    assert combine_orders(forward, backward, 0, 1) == expected


def test_disagreeing_orders_leave_the_pair_unjudged_when_ties_are_not_allowed():
    assert combine_orders("A", "A", 2, 5, allow_ties=False) == (None, True)
    assert combine_orders("B", "A", 2, 5, allow_ties=False) == (5, False)


def test_combine_maps_positions_back_to_candidate_indices():
    # forward: 3 shown as A, 7 as B; backward: 7 as A, 3 as B. Both say 7.
    assert combine_orders("B", "A", 3, 7) == (7, False)


def test_copeland_scores_are_wins_minus_losses_over_judged_pairs():
    # 0 beats 1, 0 beats 2, 1 ties 2, 3 was in no judged pair.
    outcomes = {(0, 1): 0, (0, 2): 0, (1, 2): "tie", (0, 3): None, (1, 3): None, (2, 3): None}
    scores = copeland_scores(outcomes, 4)
    assert scores == [2.0, -1.0, -1.0, None]
    assert scores_to_ranking(scores) == [1, 2, 2, None]


def test_copeland_scores_give_none_everywhere_when_nothing_was_judged():
    assert copeland_scores({(0, 1): None}, 2) == [None, None]


def test_a_single_tied_pair_scores_both_zero():
    assert copeland_scores({(0, 1): "tie"}, 3) == [0.0, 0.0, None]


def test_prompt_rendering_fills_fields_once_and_keeps_other_braces():
    template = 'Q: {prompt}\nA: {response_a}\nB: {response_b}\nReply {"winner": "A"}'
    text = render_prompt(template, "hi", "says {response_b}", "two")
    assert text == 'Q: hi\nA: says {response_b}\nB: two\nReply {"winner": "A"}'


def test_conversation_renders_as_role_paragraphs():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Review the lamp."}]},
    ]
    assert render_conversation(messages) == "System: Be brief.\n\nUser: Review the lamp."


def test_api_key_comes_from_the_named_variable():
    cfg = LLMJudgeConfig(model="m", base_url="https://api.example.com/v1", api_key_env="JUDGE_KEY")
    assert resolve_api_key(cfg, {"JUDGE_KEY": "sk-1"}) == "sk-1"


def test_a_local_server_without_a_key_gets_a_placeholder():
    cfg = LLMJudgeConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="UNSET_KEY")
    assert resolve_api_key(cfg, {}) == LOCAL_PLACEHOLDER_KEY
    no_key = LLMJudgeConfig(model="m", base_url="http://localhost:9/v1", api_key_env=None)
    assert resolve_api_key(no_key, {}) == LOCAL_PLACEHOLDER_KEY


def test_a_remote_server_without_a_key_fails_naming_the_variable():
    cfg = LLMJudgeConfig(model="m", base_url="https://api.example.com/v1", api_key_env="JUDGE_KEY")
    with pytest.raises(ValueError, match="JUDGE_KEY"):
        resolve_api_key(cfg, {})


def test_rate_limiter_spaces_calls_by_the_minimum_interval():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = MinIntervalLimiter(120, clock=lambda: now[0], sleep=sleep)  # 0.5 s apart
    limiter.wait()
    limiter.wait()
    now[0] += 2.0  # idle longer than the interval: no wait
    limiter.wait()
    assert slept == [0.5]


def test_no_rate_limit_never_sleeps():
    limiter = MinIntervalLimiter(None, sleep=lambda s: pytest.fail("slept"))
    limiter.wait()
    limiter.wait()
