"""The collect stage on the session's micro models with labelers other than the default oracle:
the oracle rule and a trained reward model together (majority pairs, agreement measured), an
annotation team's file (export, then import), and candidates from the registered champion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alignflow.feedback import store
from alignflow.feedback.labelers import LabelError
from alignflow.pipeline import tracking_context
from alignflow.store import StageResult, read_jsonl
from tasks.collect import run_collect
from tests.conftest import micro_config

PROMPTS = 24


def _stage_result(pipeline_runs, stage: str) -> StageResult:
    output = Path(pipeline_runs.first["stages"][stage]["output"])
    return StageResult.model_validate_json((output / "result.json").read_text())


def _collect(pipeline_runs, root: Path, *overrides: str) -> StageResult:
    cfg = micro_config(root, f"collect.max_prompts={PROMPTS}", *overrides)
    ctx = tracking_context(cfg, tags={})
    prepared, sft = _stage_result(pipeline_runs, "prepare"), _stage_result(pipeline_runs, "sft")
    return run_collect(cfg, ctx, prepared, sft)


def test_oracle_and_reward_model_label_together_and_agree_better_than_chance(
    pipeline_runs, tmp_path
):
    rm_dir = str(_stage_result(pipeline_runs, "reward").path("model"))
    labelers = (
        "collect.labelers=[{kind: rule, function: 'alignflow.demo:oracle_reward', name: oracle},"
        f" {{kind: reward_model, models: ['{rm_dir}'], name: rm}}]"
    )
    result = _collect(pipeline_runs, tmp_path, labelers)
    metrics = result.metrics
    records = read_jsonl(result.path("records.jsonl"))
    assert {r["labeler"] for r in records} == {"oracle", "rm"}
    assert len(records) == 2 * metrics["comparisons"]
    # The reward model learned the oracle's preferences: the two agree far above chance.
    assert metrics["agreement_krippendorff_alpha"] > 0.3
    assert metrics["agreement_mean_cohen_kappa"] > 0.3
    # With two labelers a pair needs both (a 1-1 split is skipped), so fewer pairs than units.
    assert 0 < metrics["aggregate_decided"] < metrics["aggregate_units"]
    assert metrics["aggregate_skipped_split"] > 0
    assert metrics["aggregate_decided"] == metrics["pairs_train"] + metrics["pairs_eval"]
    stored, _ = store.read(tmp_path / "feedback")
    assert store.content_digest(stored) == metrics["preference_digest"]


def test_an_annotation_teams_file_is_exported_then_imported(pipeline_runs, tmp_path):
    with pytest.raises(LabelError, match=r"exported to .*to_label.jsonl; .*file.answers"):
        _collect(pipeline_runs, tmp_path / "a", "collect.labelers=[{kind: file}]")
    (exported,) = (tmp_path / "a" / "stages" / "collect").glob("*/to_label.jsonl")
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    for row in rows:
        row["ranking"] = "B>A"  # the team always prefers the second candidate
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(row) + "\n" for row in rows))

    labelers = f"collect.labelers=[{{kind: file, name: team, file: {{answers: '{answers}'}}}}]"
    result = _collect(pipeline_runs, tmp_path / "b", labelers)
    pairs = read_jsonl(result.path("pairs.jsonl"))
    assert len(pairs) == len(rows) == result.metrics["labeler_0_answered"]
    comparisons = {c["id"]: c for c in read_jsonl(result.path("comparisons.jsonl"))}
    for pair in pairs:
        candidates = comparisons[pair["comparison_id"]]["candidates"]
        assert pair["chosen"][0]["content"] == candidates[1]
        assert pair["rejected"][0]["content"] == candidates[0]


def test_candidates_can_come_from_the_registered_champion(pipeline_runs, tmp_path):
    # A copy of the session run's MLflow store, where its policy is registered as champion.
    shutil.copy(Path(pipeline_runs.cfg.run.artifacts_root) / "mlflow.db", tmp_path / "mlflow.db")
    result = _collect(pipeline_runs, tmp_path, "collect.policy=champion",
                      "collect.samples_per_prompt=3")  # fmt: skip
    assert result.metrics["comparisons"] > 0
    sft_run = _collect(pipeline_runs, tmp_path / "sft", "collect.samples_per_prompt=3")
    champion_texts = [c["candidates"] for c in read_jsonl(result.path("comparisons.jsonl"))]
    sft_texts = [c["candidates"] for c in read_jsonl(sft_run.path("comparisons.jsonl"))]
    assert champion_texts != sft_texts  # a different policy sampled them
