"""Preference records, the people's form, the feedback store, and the file labeler's export and
import: pure functions on hand-written comparisons."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from alignflow.config import LabelerConfig, load_config
from alignflow.feedback import store
from alignflow.feedback.forms import answer_model, describe, records_from_answer, shown_orders
from alignflow.feedback.labelers import (
    LabelError,
    build_comparisons,
    export_comparisons,
    import_answers,
    labeler_id,
)
from alignflow.feedback.records import (
    Comparison,
    PreferenceRecord,
    comparison_id,
    parse_ranking,
    scores_to_ranking,
)

PROMPT = [{"role": "user", "content": "Review the kettle."}]
REPO = Path(__file__).resolve().parents[2]


def _comparison(*candidates: str, meta: dict | None = None) -> Comparison:
    return Comparison.of(PROMPT, list(candidates), meta)


# ---- records ---------------------------------------------------------------------------------


def test_scores_rank_highest_first_with_shared_ranks_for_ties():
    assert scores_to_ranking([0.2, 0.9, 0.2, None]) == [2, 1, 2, None]
    assert scores_to_ranking([3.0, 1.0, 2.0]) == [1, 3, 2]


@pytest.mark.parametrize(
    ("text", "n", "ranking"),
    [("B>A=C", 4, [2, 1, 2, None]), ("A>B", 2, [1, 2]), ("A=B", 2, [1, 1]),
     ("C > B > A", 3, [3, 2, 1])],
)  # fmt: skip
def test_written_rankings_parse_best_first(text, n, ranking):
    assert parse_ranking(text, n) == ranking


@pytest.mark.parametrize(
    ("text", "problem"),
    [("A", "joined by > or ="), ("A>A", "candidate A appears twice"),
     ("A>E", "no candidate E (only 3)"), ("a>b", "joined by")],
)  # fmt: skip
def test_bad_written_rankings_say_what_is_wrong(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_ranking(text, 3)


def test_comparison_id_depends_on_prompt_and_candidates_only():
    first = _comparison("good", "bad", meta={"family": "review"})
    assert first.id == _comparison("good", "bad").id == comparison_id(PROMPT, ["good", "bad"])
    assert first.id != _comparison("bad", "good").id


def test_identical_candidates_collapse_and_single_ones_are_counted():
    rows = [{"prompt": PROMPT, "family": "review"}, {"prompt": PROMPT, "family": "unsafe"}]
    comparisons, counts = build_comparisons(rows, [["a", "b", "a"], ["same", "same"]])
    assert [c.candidates for c in comparisons] == [["a", "b"]]
    assert comparisons[0].meta == {"family": "review"}
    assert counts == Counter(candidates_collapsed=2, single_candidate=1)


def test_a_prompt_drawn_twice_with_the_same_candidates_is_one_comparison():
    """The demo draws prompts with replacement: a second identical comparison would carry the
    same id, and its labels would be one labeler answering it twice."""
    rows = [{"prompt": PROMPT}, {"prompt": PROMPT}, {"prompt": PROMPT}]
    comparisons, counts = build_comparisons(rows, [["a", "b"], ["b", "a", "a"], ["a", "c"]])
    assert [c.candidates for c in comparisons] == [["a", "b"], ["b", "a"], ["a", "c"]]
    comparisons, counts = build_comparisons(rows, [["a", "b"], ["a", "b", "b"], ["a", "c"]])
    assert [c.candidates for c in comparisons] == [["a", "b"], ["a", "c"]]
    assert counts["duplicate_comparison"] == 1 and len({c.id for c in comparisons}) == 2


def test_labeler_ids_name_the_kind_and_source():
    assert labeler_id(LabelerConfig(kind="rule", function="m:f")) == "rule:m:f"
    assert labeler_id(LabelerConfig(kind="human")) == "human"
    assert labeler_id(LabelerConfig(kind="human", name="team-a")) == "team-a"


@pytest.mark.parametrize(
    ("labeler", "message"),
    [({"kind": "rule"}, "a 'rule' labeler needs `function`"),
     ({"kind": "reward_model"}, "needs `models`"), ({"kind": "llm_judge"}, "needs `llm_judge`")],
)  # fmt: skip
def test_a_labeler_without_its_source_is_a_config_error(labeler, message):
    with pytest.raises(ValidationError, match=message):
        LabelerConfig(**labeler)


# ---- the form people fill in -----------------------------------------------------------------


def test_choice_form_requires_one_answer_per_comparison():
    batch = [_comparison("a", "b"), _comparison("x", "y", "z")]
    form = answer_model(batch, "choice")
    schema = form.model_json_schema()
    assert set(schema["required"]) == {"c1_best", "c2_best"}
    assert schema["properties"]["c2_best"]["enum"] == ["A", "B", "C", "tie"]
    with pytest.raises(ValidationError):
        form(c1_best="A", c2_best="D")  # comparison 2 has no D
    with pytest.raises(ValidationError):
        form(c1_best="A", c2_best="B", c1_confidence=1.5)


def test_ranking_form_checks_the_written_ranking():
    form = answer_model([_comparison("a", "b", "c")], "ranking")
    assert form(c1_ranking="C>A=B").c1_ranking == "C>A=B"
    with pytest.raises(ValidationError):
        form(c1_ranking="C, A, B")


def test_letters_name_shown_positions_and_records_store_rankings_by_candidate():
    batch = [_comparison("first", "second", "third")]
    orders = [[2, 0, 1]]  # shown: A = third, B = first, C = second
    answer = {"c1_best": "A", "c1_confidence": 0.8, "c1_comment": "clear"}
    (record,) = records_from_answer(batch, orders, answer, "choice", "human:ann")
    assert record.ranking == [2, 2, 1]  # "third" best, the rest below it
    assert record.shown_order == [2, 0, 1]
    assert (record.labeler, record.confidence, record.comment) == ("human:ann", 0.8, "clear")
    (ranked,) = records_from_answer(batch, orders, {"c1_ranking": "B>C>A"}, "ranking", "h")
    assert ranked.ranking == [1, 2, 3]  # B = "first", C = "second", A = "third"
    (tie,) = records_from_answer(batch, orders, {"c1_best": "tie"}, "choice", "h")
    assert tie.ranking == [1, 1, 1]


def test_shown_orders_are_shuffled_reproducibly_and_described_in_that_order():
    batch = [_comparison(*"abcdefgh"), _comparison("p", "q")]
    orders = shown_orders(batch, seed=0)
    assert orders == shown_orders(batch, seed=0)
    assert sorted(orders[0]) == list(range(8)) and orders[0] != list(range(8))
    text = describe(batch, orders, total=5)
    assert "Label 2 comparisons (5 left" in text
    first_shown = batch[0].candidates[orders[0][0]]
    assert f"**A**\n\n> {first_shown}" in text


# ---- the feedback store ----------------------------------------------------------------------


def _record(comparison: Comparison, ranking, labeler="rule:x") -> PreferenceRecord:
    return PreferenceRecord(
        comparison_id=comparison.id, prompt=comparison.prompt,
        candidates=comparison.candidates, ranking=ranking, labeler=labeler,
    )  # fmt: skip


def test_the_store_returns_only_records_added_since_the_watermark(tmp_path):
    one, two = _comparison("a", "b"), _comparison("c", "d", "e")
    assert store.read(tmp_path / "fb") == ([], None)
    store.append(tmp_path / "fb", [_record(one, [1, 2])])
    first, mark = store.read(tmp_path / "fb")
    assert [r.candidates for r in first] == [["a", "b"]] and mark is not None
    store.append(tmp_path / "fb", [_record(two, [None, 1, 1], "human:bo")])
    new, later = store.read(tmp_path / "fb", after=mark)
    assert [(r.ranking, r.labeler) for r in new] == [([None, 1, 1], "human:bo")]
    assert store.read(tmp_path / "fb", after=later) == ([], later)
    everything, _ = store.read(tmp_path / "fb")
    assert everything[1].model_dump() == new[0].model_dump()  # round trip, timestamps included
    assert not list((tmp_path / "fb").glob(".*"))  # no temporary left behind


def test_digest_depends_on_the_labels_not_on_when_they_were_given():
    comparison = _comparison("a", "b")
    first, again = _record(comparison, [1, 2]), _record(comparison, [1, 2])
    assert store.content_digest([first]) == store.content_digest([again])
    assert store.content_digest([first]) != store.content_digest([_record(comparison, [2, 1])])


# ---- an annotation team's files --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_exported_comparisons_come_back_as_records(tmp_path, fmt):
    batch = [_comparison("a", "b"), _comparison("x", "y", "z", meta={"family": "unsafe"})]
    path = export_comparisons(batch, tmp_path, fmt)
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[0].update(ranking="B>A", labeler="ann", confidence=0.9)
        rows[1].update(ranking="c>a=b", comment="C is safest")
        answers = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        lines = path.read_text().splitlines()
        assert lines[0] == "comparison_id,prompt,A,B,C,ranking,labeler,confidence,comment"
        answers = "\n".join([lines[0], f"{batch[0].id},p,a,b,,B>A,ann,0.9,",
                             f"{batch[1].id},p,x,y,z,C>A=B,,,C is safest"])  # fmt: skip
    (tmp_path / f"answers.{fmt}").write_text(answers)
    records, counts = import_answers(tmp_path / f"answers.{fmt}", batch, "file")
    assert [(r.ranking, r.labeler, r.confidence) for r in records] == [
        ([2, 1], "ann", 0.9),
        ([2, 2, 1], "file", None),
    ]
    assert records[1].comment == "C is safest" and records[1].meta == {"family": "unsafe"}
    assert counts == Counter(answered=2)


@pytest.mark.parametrize(
    ("line", "error"),
    [("{not json", "answers.jsonl:2: not valid JSON"),
     ('{"comparison_id": "nope", "ranking": "A>B"}', "answers.jsonl:2: comparison_id 'nope' was not exported"),
     ('{"comparison_id": "ID", "ranking": "A>C"}', "answers.jsonl:2: ranking 'A>C': there is no candidate C"),
     ('{"comparison_id": "ID", "ranking": "A>B", "confidence": 7}', "answers.jsonl:2: confidence: Input should be less than or equal to 1"),
     ("[1, 2]", "answers.jsonl:2: expected a JSON object")],
)  # fmt: skip
def test_bad_answers_name_file_line_and_problem(tmp_path, line, error):
    comparison = _comparison("a", "b")
    good = json.dumps({"comparison_id": comparison.id, "ranking": ""})  # unanswered: fine
    (tmp_path / "answers.jsonl").write_text(good + "\n" + line.replace("ID", comparison.id))
    with pytest.raises(LabelError, match=error):
        import_answers(tmp_path / "answers.jsonl", [comparison], "file")


def _prompt_sets(missing: str) -> list[str]:
    """Overrides for the three prompt datasets, all but `missing` keeping the demo columns."""
    keep = {role: "" if role == missing else ", keep_columns: [family, subject]"
            for role in ("preference_prompts", "rl_prompts", "heldout")}  # fmt: skip
    return [f"data.{role}=[{{path: {role}.jsonl{extra}}}]" for role, extra in keep.items()]


@pytest.mark.parametrize(
    ("missing", "user", "more"),
    [
        ("preference_prompts", "a collect labeler",
         ["collect.labelers=[{kind: rule, function: alignflow.demo:oracle_reward}]"]),
        ("rl_prompts", "a rewards.rules entry",
         ["rewards.rules=[{function: alignflow.demo:oracle_reward}]",
          "collect.labelers=[{kind: reward_model, models: [my-org/rm]}]"]),
    ],
)  # fmt: skip
def test_the_demo_oracle_needs_its_columns_on_the_prompts_it_scores(missing, user, more):
    with pytest.raises(
        Exception,
        match=rf"data.{missing}\[0\]: {user} is the demo oracle .*keep_columns: \[family, subject\]",
    ):
        load_config(
            REPO / "configs" / "micro.yaml",
            [
                "data.source=files",
                "data.sft=[{path: s.jsonl}]",
                *_prompt_sets(missing),
                "evaluate.judge=alignflow.demo:oracle_reward",
                *more,
            ],  # fmt: skip
        )


FILES_LABELLED_BY_A_REWARD_MODEL = [
    "data.source=files",
    "data.sft=[{path: s.jsonl}]",
    "data.preference_prompts=[{path: p.jsonl}]",
    "data.rl_prompts=[{path: r.jsonl}]",
    "data.heldout=[{path: h.jsonl}]",
    "collect.labelers=[{kind: reward_model, models: [my-org/rm]}]",
]


ORACLE = "alignflow.demo:oracle_reward"


@pytest.mark.parametrize(
    ("judges", "key"),
    [
        ([f"evaluate.judge={ORACLE}"], "evaluate.judge"),  # retrain.judge follows it
        ([f"evaluate.judge={ORACLE}", "retrain.judge=reward_model"], "evaluate.judge"),
        (["evaluate.judge=my.rules:score", f"retrain.judge={ORACLE}"], "retrain.judge"),
    ],
)  # fmt: skip
def test_held_out_prompts_need_the_oracle_columns_while_the_oracle_judges(judges, key):
    """The oracle judging the evaluation or the retraining rounds reads the held-out rows' demo
    columns, so a files config without them fails at load, naming the held-out set and the judge."""
    with pytest.raises(
        Exception,
        match=rf"data.heldout\[0\]: {key} is the demo oracle .*keep_columns: \[family, subject\]",
    ):
        load_config(REPO / "configs" / "micro.yaml", FILES_LABELLED_BY_A_REWARD_MODEL + judges)


def test_the_demo_supplies_its_judges_and_a_files_config_names_its_own():
    """The core names no judge: the demo's oracle judges and labels a demo config; a files config
    without a judge, or collecting without a labeler, fails at load naming the key; retrain.judge
    follows evaluate.judge unless set."""
    demo = load_config(REPO / "configs" / "micro.yaml", [])
    assert (demo.evaluate.judge, demo.retrain.judge) == (ORACLE, ORACLE)
    assert [labeler.function for labeler in demo.collect.labelers] == [ORACLE]
    with pytest.raises(Exception, match=r"evaluate.judge: name who scores the held-out samples"):
        load_config(REPO / "configs" / "micro.yaml", FILES_LABELLED_BY_A_REWARD_MODEL)
    unlabelled = [o for o in FILES_LABELLED_BY_A_REWARD_MODEL if not o.startswith("collect.")]
    with pytest.raises(Exception, match=r"collect.labelers: name who labels"):
        load_config(REPO / "configs" / "micro.yaml", [*unlabelled, "evaluate.judge=reward_model"])
    files = load_config(
        REPO / "configs" / "micro.yaml",
        [*FILES_LABELLED_BY_A_REWARD_MODEL, "evaluate.judge=my.rules:score"],
    )
    assert (files.evaluate.judge, files.retrain.judge) == ("my.rules:score", "my.rules:score")


def test_held_out_prompts_need_no_demo_columns_under_other_judges():
    cfg = load_config(
        REPO / "configs" / "micro.yaml",
        [*FILES_LABELLED_BY_A_REWARD_MODEL, "evaluate.judge=reward_model",
         "retrain.judge=my.rules:score"],
    )  # fmt: skip
    assert (cfg.evaluate.judge, cfg.retrain.judge) == ("reward_model", "my.rules:score")
    assert cfg.data.heldout[0].keep_columns == []
