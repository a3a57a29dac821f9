"""The llm_judge evaluator's parsing and bookkeeping, NaN-aware intervals and safety rates, the
registry gate's choices, and the evaluation table with a champion and partial rows."""

from __future__ import annotations

import math

import pytest

from alignflow.config import LLMJudgeConfig, MetricConfig, load_config
from alignflow.evaluation import markdown_table
from alignflow.llm_evaluation import LLMEvaluator, parse_grade, parse_yes_no
from alignflow.metrics import interval, safety_rates
from tests.conftest import REPO

NAN = float("nan")


@pytest.mark.parametrize(
    ("answer", "grade"),
    [("[[7]]", 7.0), ("Rating: [[ 9.5 ]]", 9.5), ("The response is 10.", 10.0),
     ("I'd give it 8/10", 8.0), ("[[11]] hmm 4", None), ("0", None), ("no idea", None),
     ("", None), (None, None)],
)  # fmt: skip
def test_a_grade_is_the_bracketed_number_else_the_first_one_within_1_to_10(answer, grade):
    assert parse_grade(answer) == grade


def test_a_refusal_answer_opens_with_yes_or_no():
    assert parse_yes_no("YES, it refuses") is True
    assert parse_yes_no("**No**.") is False
    assert parse_yes_no("It refuses") is None


class _Scripted:
    """An LLM judge answering from a script (the evaluator's bookkeeping, without a server)."""

    def __init__(self, answers):
        self.cfg = LLMJudgeConfig(model="scripted", api_key_env=None)
        self.answers = iter(answers)

    def complete(self, content: str) -> str:
        return next(self.answers)

    def judge_pair(self, comparison, i, j, counters):
        from alignflow.feedback.llm_judge import LLMJudge

        return LLMJudge.judge_pair(self, comparison, i, j, counters)

    def _verdict(self, comparison, shown, counters):
        from alignflow.feedback.llm_judge import LLMJudge

        return LLMJudge._verdict(self, comparison, shown, counters)

    def ask(self, prompt, a, b):
        return next(self.answers)


ROWS = [{"prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]


def test_pairwise_outcomes_combine_both_orders_and_count_position_bias():
    metric = MetricConfig(kind="llm_judge", llm_judge={"model": "m", "api_key_env": None})
    # prompt 0: A then B (ours first, then ours second): ours wins both orders -> 1
    # prompt 1: A, A: the judge followed position -> a tie, inconsistent
    # prompt 2: B then garbage: unjudged -> NaN
    evaluator = LLMEvaluator(metric, _Scripted(["A", "B", "A", "A", "B", "???"]))
    grid = evaluator.pairwise(ROWS, [["x", "y", "z"]], [["u", "v", "w"]])
    assert grid[0][:2] == [1.0, 0.5] and math.isnan(grid[0][2])
    report = evaluator.report()
    assert report["pairwise_calls"] == 6 and report["unparsable"] == 1
    assert report["pairs"] == 3 and report["pairs_judged"] == 2
    assert report["first_position_rate"] == pytest.approx(3 / 5)  # A,A,A of A,B,A,A,B
    assert report["inconsistent_rate"] == pytest.approx(1 / 3)


def test_grades_cover_the_first_prompts_and_samples_only_and_unusable_ones_are_nan():
    metric = MetricConfig(kind="llm_judge", llm_judge={"model": "m", "api_key_env": None},
                          max_prompts=2, samples=1)  # fmt: skip
    evaluator = LLMEvaluator(metric, _Scripted(["[[6]]", "meh"]))
    grid = evaluator.grades(ROWS, [["a", "b", "c"], ["d", "e", "f"]])
    assert len(grid) == 1 and grid[0][0] == 6.0 and math.isnan(grid[0][1])
    assert evaluator.report()["ungraded"] == 1


def test_intervals_and_safety_rates_leave_unjudged_values_out():
    low, high = interval([[1.0, NAN, 0.0, 1.0]], seed=0)
    assert 0 <= low <= 2 / 3 <= high <= 1
    assert all(math.isnan(v) for v in interval([[NAN, NAN]]))
    rows = [{"harmful": True}, {"harmful": True}, {"harmful": False}]
    rates = safety_rates(rows, [[1.0, NAN, 0.0]], "harmful", [True])
    assert rates["refusal_rate"][0] == 1.0 and rates["false_refusal_rate"][0] == 0.0


def test_metric_configs_name_what_they_need():
    with pytest.raises(ValueError, match="needs `llm_judge`"):
        MetricConfig(kind="llm_judge")
    with pytest.raises(ValueError, match="needs `tasks`"):
        MetricConfig(kind="benchmark")
    with pytest.raises(ValueError, match="classifier llm_judge needs `llm_judge`"):
        MetricConfig(kind="safety", classifier="llm_judge")
    with pytest.raises(ValueError, match="rubric_template must contain {response}"):
        MetricConfig(kind="llm_judge", llm_judge={"model": "m"}, rubric_template="{prompt}")
    with pytest.raises(ValueError, match="is listed twice"):
        load_config(
            REPO / "configs" / "tiny.yaml",
            ["evaluate.metrics=[{kind: reference}, {kind: reference}]"],
        )
    with pytest.raises(ValueError, match="api_key_env"):
        LLMJudgeConfig(model="m", api_key_env="sk-live-123")
    with pytest.raises(ValueError, match="registry.gate: llm_grade"):
        load_config(REPO / "configs" / "tiny.yaml", ["registry.gate=llm_grade"])


def test_the_table_has_a_champion_column_and_dashes_where_a_policy_has_no_figure():
    summary = {
        "algorithm": "dpo", "judge": "j", "reference": "sft", "champion_version": "3",
        "judge_score": {"base": 0.1, "sft": 0.2, "policy": 0.3, "champion": 0.25},
        "llm_win_rate_vs_sft": {"base": 0.2, "policy": 0.7, "champion": NAN},
        "win_rate_policy_vs_sft": 0.6, "win_rate_policy_vs_sft_by_family": {},
        "win_rate_policy_vs_champion": 0.55, "rm_accuracy": None, "rm_accuracy_by_family": {},
        "kl_policy_vs_sft": 1.0, "kl_policy_vs_sft_per_token": 0.1,
        "bench_mc": {"base": 0.25, "sft": 0.5, "policy": 0.5, "champion": 0.75},
    }  # fmt: skip
    table = markdown_table(summary)
    assert "| metric | base | sft | dpo | champion v3 |" in table
    assert "| llm_win_rate_vs_sft | 0.200 | — | 0.700 | n/a |" in table
    assert "| bench_mc | 0.250 | 0.500 | 0.500 | 0.750 |" in table
    assert "win-rate DPO vs champion v3 (judge):** 0.550" in table


def test_the_registry_gates_on_llm_grades_over_the_prompts_graded_on_both_sides(tmp_path):
    """registry.gate: llm_grade — responses the judge could not grade are left out, prompts past
    max_prompts carry no grade, and a policy graded higher on every graded prompt passes while
    one graded lower is refused."""
    from alignflow.stages import SAMPLES_FILE
    from alignflow.stages.register import gate
    from alignflow.store import StageResult, write_jsonl

    judge = '{"model": "m", "api_key_env": null}'
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"evaluate.metrics=[{{kind: llm_judge, llm_judge: {judge}}}]", "registry.gate=llm_grade",
    ])  # fmt: skip
    evaluate = StageResult(stage="evaluate", cache_key="k", output=str(tmp_path),
                           metrics={"summary": {"reference": "sft"}})  # fmt: skip

    def decide(policy_grades: list[float]):
        rows = [
            {"policy_llm_grade": [p, NAN], "sft_llm_grade": [s, s]}
            for p, s in zip(policy_grades, [4.0, 5.0, NAN, 6.0, 5.0, 4.0], strict=True)
        ]
        rows.append({"prompt": "past max_prompts: no grade"})
        write_jsonl(tmp_path / SAMPLES_FILE, rows)
        return gate(cfg, evaluate)

    better = decide([7.0, 8.0, 9.0, 8.0, 7.0, 7.0])
    assert better.promote and better.prompts == 5  # the prompt SFT got no grade on is left out
    assert better.gain == pytest.approx((3 + 3 + 2 + 2 + 3) / 5)
    assert not decide([3.0, 4.0, 9.0, 5.0, 4.0, 3.0]).promote


def test_a_decision_over_grades_leaves_ungraded_responses_and_prompts_out():
    from alignflow.promotion import decide

    challenger = [[8.0, NAN, 7.0, 9.0], [NAN, NAN, 9.0, 7.0]]
    champion = [[5.0, 6.0, NAN, 4.0], [7.0, NAN, NAN, 6.0]]
    decision = decide(challenger, champion, 0.0, 0.95, 200, 0)
    # prompt 0: 8 vs 6; prompt 1 graded on no side, prompt 2 on one side: left out; prompt 3: 8 vs 5
    assert decision.prompts == 2 and decision.gain == pytest.approx((2 + 3) / 2)
    for one in (decide([[NAN, 9.0]], [[1.0, 1.0]], 0.0, 0.95, 200, 0),
                decide([[9.0]], [[1.0]], 0.0, 0.95, 200, 0)):  # fmt: skip
        assert not one.promote and one.prompts == 1 and "Fewer than 2" in one.reason
    with pytest.raises(ValueError, match="retrain.gate: llm_grade"):
        load_config(REPO / "configs" / "tiny.yaml", ["retrain.gate=llm_grade"])


def test_two_identical_responses_tie_without_asking_the_judge():
    metric = MetricConfig(kind="llm_judge", llm_judge={"model": "m", "api_key_env": None})
    evaluator = LLMEvaluator(metric, _Scripted([]))  # any call would raise StopIteration
    assert evaluator.pairwise(ROWS[:2], [["same", "same too"]], [["same", "same too"]]) == [
        [0.5, 0.5]
    ]
    report = evaluator.report()
    assert report["identical_pairs"] == 2 and report["pairwise_calls"] == report["pairs"] == 0
