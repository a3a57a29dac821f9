"""Evaluation metrics worked out by hand, on the demo's prompt families and on a user's prompts
that have none."""

import pytest

from alignflow.evaluation import PolicySamples, markdown_table, policy_metrics, summarize, win_rate
from alignflow.stages.reward import pair_accuracy

DEMO_ROWS = [{"prompt": [], "family": "unsafe"}, {"prompt": [], "family": "review"}]
USER_ROWS = [{"prompt": []}, {"prompt": []}]


def _samples(texts: list[list[str]]) -> PolicySamples:
    """[sample_index][prompt_index] texts, each with KL 0.5 over 2 tokens."""
    return PolicySamples(
        samples=texts,
        kl_to_reference=[[0.5] * len(t) for t in texts],
        tokens=[[2] * len(t) for t in texts],
        greedy=[],
    )


def test_win_rate_counts_ties_half_overall_and_per_family():
    challenger = [[1.0, 0.0], [2.0, 1.0]]  # [sample][prompt]
    baseline = [[0.0, 0.0], [3.0, 0.0]]
    # unsafe: win, loss; review: tie, win
    assert win_rate(DEMO_ROWS, challenger, baseline) == (
        (1 + 0 + 0.5 + 1) / 4,
        {"unsafe": 0.5, "review": 0.75},
    )
    assert win_rate(USER_ROWS, challenger, baseline) == (2.5 / 4, {})
    # a family of the user's may be called "all": it stays apart from the overall rate
    assert win_rate([{"family": "all"}, {}], challenger, baseline) == (2.5 / 4, {"all": 0.5})


def test_policy_metrics_are_the_same_for_any_rows_and_refusals_are_the_safety_evaluators():
    texts = [["Sorry, I can't help with that.", "I love the Nimbus kettle!"],
             ["Sure, here is how.", "Sorry, I can't review that."]]  # fmt: skip
    judge, rm = [[1.0, 0.5], [0.0, 0.0]], [[2.0, 1.0], [0.0, -1.0]]
    demo_metrics = policy_metrics(DEMO_ROWS, _samples(texts), judge, rm)
    assert demo_metrics == pytest.approx({
        "judge_score": 1.5 / 4, "reward_score": 2.0 / 4,
        "kl_to_sft": 0.5, "kl_to_sft_per_token": 0.25,
        "mean_words": (6 + 5 + 4 + 5) / 4,
    })  # fmt: skip
    assert policy_metrics(USER_ROWS, _samples(texts), judge, rm) == demo_metrics


def test_safety_rates_split_harmful_and_benign_prompts_by_their_column():
    from alignflow.metrics import refusal_rule, safety_rates

    texts = [["Sorry, I can't help with that.", "I love the Nimbus kettle!"],
             ["Sure, here is how.", "Sorry, I can't review that."]]  # fmt: skip
    refused = [refusal_rule(None, sample) for sample in texts]
    rates = safety_rates(DEMO_ROWS, refused, "family", ["unsafe"])
    assert {key: rate for key, (rate, _) in rates.items()} == {
        "refusal_rate": 0.5,  # the unsafe prompt: refused once in two samples
        "false_refusal_rate": 0.5,  # the review prompt: refused once
    }
    assert rates["refusal_rate"][1] == [[1.0], [0.0]]  # its grid: that prompt's samples only
    # values match case-insensitively; booleans work; no harmful row: no refusal rate
    flagged = [{"harmful": True}, {"harmful": "NO"}]
    assert set(safety_rates(flagged, refused, "harmful", [True])) == {
        "refusal_rate", "false_refusal_rate"
    }  # fmt: skip
    assert set(safety_rates(USER_ROWS, refused, "family", ["unsafe"])) == {"false_refusal_rate"}
    # the default classifier: common English and Chinese refusals, not praise that says "cannot"
    assert refusal_rule(None, ["抱歉，我不能帮助你。", "I cannot recommend it enough!",
                               "I'm sorry, but I cannot help with that."]) == [1.0, 0.0, 1.0]  # fmt: skip


def test_the_table_names_the_judge_and_shows_only_the_metrics_there_are():
    texts = [["a b", "c"]]
    per_policy = {
        name: policy_metrics(USER_ROWS, _samples(texts), [[score, 0.0]], [[0.0, 0.0]])
        for name, score in (("base", 0.0), ("sft", 1.0), ("policy", 2.0))
    }
    wins = win_rate(USER_ROWS, [[2.0, 0.0]], [[1.0, 0.0]])
    summary = summarize(per_policy, wins, (0.8, {}), "dpo", "my.rules:score")
    assert summary["judge"] == "my.rules:score"
    assert summary["judge_score"] == {"base": 0.0, "sft": 0.5, "policy": 1.0}
    assert summary["win_rate_policy_vs_sft"] == 0.75
    table = markdown_table(summary)
    assert table.startswith("judge: `my.rules:score`")
    assert "| judge_score | 0.000 | 0.500 | 1.000 |" in table
    assert "refusal_rate" not in table
    assert "**win-rate DPO vs SFT (judge):** 0.750\n" in table
    assert "**reward-model held-out pair accuracy:** 0.800\n" in table
    by_family = markdown_table(summarize(per_policy, wins, (0.8, {"x": 0.7}), "dpo", "j:s"))
    assert "**reward-model held-out pair accuracy:** 0.800 (x 0.700)\n" in by_family
    # no held-out pairs (the reward stage then reports no accuracy)
    assert pair_accuracy(None, None, []) == {}
    unmeasured = markdown_table(summarize(per_policy, wins, (None, {}), "dpo", "j:s"))
    assert "**reward-model held-out pair accuracy:** n/a\n" in unmeasured


def test_fluency_is_reported_when_given():  # the scorer itself: tests/stage/test_real_models.py
    samples = _samples([["a", "b"], ["c", "d"]])
    metrics = policy_metrics(DEMO_ROWS, samples, [[1, 0], [1, 0]], None, [-1.0, -2.0, -3.0, -4.0])
    assert metrics["fluency"] == pytest.approx(-2.5)
    assert "fluency" not in policy_metrics(DEMO_ROWS, samples, [[1, 0], [1, 0]], None)


def test_the_samples_section_shows_each_policy_on_the_first_prompts_of_each_family():
    from alignflow.evaluation import samples_markdown

    rows = [
        {"prompt": [{"role": "user", "content": f"{family} {i}"}], "family": family}
        for family in ("review", "unsafe")
        for i in range(3)
    ]
    greedy = {
        "base": [f"base says\n\n{i}" for i in range(6)],
        "sft": [f"sft {i}" for i in range(6)],
        "policy": ["" if i == 0 else f"policy {i}" for i in range(6)],
    }
    text = samples_markdown(rows, greedy, per_family=2)
    shown = [line for line in text.splitlines() if line.startswith("**")]
    assert shown == ["**review 0**", "**review 1**", "**unsafe 0**", "**unsafe 1**"]
    assert "- base: base says ⏎ 3" in text  # one line per response, newlines shown
    assert "- policy: ∅" in text  # an empty response is visible as such
    assert "- sft: sft 4" in text and "review 2" not in text and "unsafe 2" not in text
