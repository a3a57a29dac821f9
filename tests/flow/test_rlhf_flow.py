"""The real Prefect flow against a real MLflow store (SQLite in a temp dir), run once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignflow.pipeline import STAGES, tracking_uri

POLICY_KEYS = ("base", "sft", "policy")


def test_first_run_computes_every_stage_in_order(pipeline_runs):
    stages = pipeline_runs.first["stages"]
    assert list(stages) == list(STAGES)
    assert {s["status"] for s in stages.values()} == {"completed"}
    for stage in stages.values():
        assert (Path(stage["output"]) / "COMPLETE").exists()
        assert not Path(stage["output"] + ".partial").exists()


def test_second_run_reuses_every_stage_and_reports_the_same_eval(pipeline_runs):
    first, second = pipeline_runs.first, pipeline_runs.second
    assert {s["status"] for s in second["stages"].values()} == {"cached"}
    assert second["eval"] == first["eval"]
    assert second["run_id"] != first["run_id"]
    for name in STAGES:
        assert second["stages"][name]["output"] == first["stages"][name]["output"]


def test_summary_json_has_the_documented_shape_and_latest_points_at_newest(pipeline_runs):
    root = pipeline_runs.root
    latest = json.loads((root / "latest" / "summary.json").read_text())
    assert latest["run_id"] == pipeline_runs.second["run_id"]
    on_disk = json.loads((root / pipeline_runs.first["run_id"] / "summary.json").read_text())
    assert on_disk["run_id"] == pipeline_runs.first["run_id"]
    ev = on_disk["eval"]
    assert ev["judge"] == "alignflow.demo:oracle_reward"
    assert 0.0 <= ev["win_rate_policy_vs_sft"] <= 1.0
    for key in ("judge_score", "reward_score", "refusal_rate", "false_refusal_rate"):
        assert set(ev[key]) == set(POLICY_KEYS), key
    assert set(ev["rm_accuracy_by_family"]) == {"review", "unsafe"}
    assert min(ev["rm_accuracy_by_family"].values()) <= ev["rm_accuracy"]
    assert ev["rm_accuracy"] <= max(ev["rm_accuracy_by_family"].values())
    assert ev["kl_policy_vs_sft"] >= 0.0
    # KL of the SFT policy to itself is exactly zero: the reference really is the SFT model.
    assert ev["kl_to_sft"]["sft"] == 0.0
    for stage in on_disk["stages"].values():
        assert set(stage) == {"status", "seconds", "output", "mlflow_run_id"}


def test_prefect_flow_runs_completed_and_published_the_eval_table(pipeline_runs):
    assert pipeline_runs.flow_run_states == ["COMPLETED", "COMPLETED"]
    assert {"alignflow-eval", "alignflow-run"} <= set(pipeline_runs.artifact_keys)
    # the pictures: the evaluation's bars and the policy's curves, PNGs inside the artifact
    for key in ("alignflow-eval-chart", "alignflow-policy-curves"):
        assert pipeline_runs.artifact_types[key] == "image data:image/png;base64,", key


def _client(pipeline_runs) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri(pipeline_runs.cfg))


def test_mlflow_has_a_parent_run_with_config_and_a_child_run_per_stage(pipeline_runs):
    client = _client(pipeline_runs)
    parent_id = pipeline_runs.first["mlflow_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["policy.ppo.updates"] == str(pipeline_runs.cfg.policy.ppo.updates)
    assert parent.data.tags["prefect.flow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent_id, "config")}
    assert "config/resolved.yaml" in artifacts
    assert parent.data.metrics["eval.win_rate_policy_vs_sft"] == pytest_approx(
        pipeline_runs.first["eval"]["win_rate_policy_vs_sft"]
    )
    experiment = parent.info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(run.data.tags["stage"] for run in children) == sorted(STAGES)
    by_stage = {run.data.tags["stage"]: run for run in children}
    for name, stage in pipeline_runs.first["stages"].items():
        assert stage["mlflow_run_id"] == by_stage[name].info.run_id


def test_mlflow_child_runs_hold_per_step_metrics(pipeline_runs):
    client = _client(pipeline_runs)
    stages = pipeline_runs.first["stages"]
    sft_loss = client.get_metric_history(stages["sft"]["mlflow_run_id"], "loss")
    assert len(sft_loss) >= 3
    ppo_run = stages["policy"]["mlflow_run_id"]
    for metric in ("reward", "rlhf_reward", "kl", "clipfrac", "value_loss", "entropy",
                   "approx_kl", "generation_seconds", "training_seconds"):  # fmt: skip
        history = client.get_metric_history(ppo_run, metric)
        assert len(history) == pipeline_runs.cfg.policy.ppo.updates, metric


def test_policy_is_registered_once_with_the_champion_alias(pipeline_runs):
    client = _client(pipeline_runs)
    name = pipeline_runs.cfg.registry.model_name
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1  # the cached second run registers nothing new
    assert client.get_model_version_by_alias(name, "champion").version == versions[0].version
    assert pipeline_runs.first["registered"]["alias"] == "champion"


def test_every_parent_run_links_every_stage_it_used_the_cached_ones_included(pipeline_runs):
    """The second run computed nothing: its parent run still names each stage's MLflow run (the
    first run's children) in tags and in its description, beside the evaluation table."""
    client = _client(pipeline_runs)
    parent = client.get_run(pipeline_runs.second["mlflow_run_id"])
    tags = parent.data.tags
    for name, stage in pipeline_runs.first["stages"].items():
        assert tags[f"alignflow.stage.{name}.status"] == "cached"
        assert tags[f"alignflow.stage.{name}.run_id"] == stage["mlflow_run_id"]
        experiment = client.get_run(stage["mlflow_run_id"]).info.experiment_id
        assert (
            f"(#/experiments/{experiment}/runs/{stage['mlflow_run_id']})"
            in (tags["mlflow.note.content"])
        )
    assert "| judge_score |" in tags["mlflow.note.content"]


def test_the_registered_version_carries_its_evaluation_as_description_and_tags(pipeline_runs):
    client = _client(pipeline_runs)
    name = pipeline_runs.cfg.registry.model_name
    version = client.get_model_version_by_alias(name, "champion")
    ev = pipeline_runs.first["eval"]
    assert f"judge: `{ev['judge']}`" in version.description
    assert "| judge_score |" in version.description and "registration gate" in version.description
    assert float(version.tags["eval.judge_score"]) == pytest.approx(
        ev["judge_score"]["policy"], rel=1e-5
    )  # tags hold 6 significant digits
    gain = pipeline_runs.first["registered"]["gain"]
    assert float(version.tags["gate.gain"]) == pytest.approx(gain, rel=1e-5)
    assert version.tags["alignflow.algorithm"] == "ppo"
    # the logged model's card: the description and the license of the tiny model built here.
    # The model's artifacts resolve through MLflow's process-wide store, as in the process that
    # logged them: set it here, whatever an earlier test left there.
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri(pipeline_runs.cfg))
    try:
        card = client.download_artifacts(version.run_id, "policy/model_card.md")
        card_data = Path(client.download_artifacts(version.run_id, "policy/model_card_data.yaml"))
    finally:
        mlflow.set_tracking_uri(previous)
    assert "| judge_score |" in Path(card).read_text()
    assert "license: apache-2.0" in card_data.read_text()


def pytest_approx(value):
    import pytest

    return pytest.approx(value)


def test_summary_shows_the_evaluation_table_and_where_to_look(pipeline_runs):
    from typer.testing import CliRunner

    from alignflow.app.cli import app

    root = pipeline_runs.root
    latest = json.loads((root / "latest" / "summary.json").read_text())
    shown = CliRunner().invoke(app, ["summary", "--artifacts-root", str(root)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"run {latest['run_id']}"
    assert any(line.startswith("| judge_score |") for line in lines)  # the evaluation table
    table = next(line.removeprefix("evaluation: ") for line in lines if line.startswith("eval"))
    assert Path(table).read_text().startswith(f"judge: `{latest['eval']['judge']}`")
    mlflow_ui = f"mlflow: mlflow ui --backend-store-uri {tracking_uri(pipeline_runs.cfg)} "
    assert any(line.startswith(mlflow_ui) for line in lines), shown.output
    assert lines[-1] == f"summary: {Path(latest['run_dir']) / 'summary.json'}"
    as_json = CliRunner().invoke(app, ["summary", "--artifacts-root", str(root), "--json"])
    assert json.loads(as_json.output) == latest


def test_the_demo_evaluation_has_reference_metrics_intervals_and_pictures(pipeline_runs):
    """The demo's held-out rows carry the answers its oracle scores best: BLEU and ROUGE-L per
    policy, every figure with a 95 % interval; the table as bar charts and PPO's curves as PNGs
    in MLflow (and the chart in the evaluate stage's folder)."""
    ev = pipeline_runs.first["eval"]
    figures = ("judge_score", "bleu", "rouge_l", "fluency", "refusal_rate", "false_refusal_rate")
    for metric in figures:
        for name in POLICY_KEYS:
            bounds = ev["intervals"][metric][name]
            assert bounds["low"] <= ev[metric][name] <= bounds["high"], (metric, name)
    assert ev["rouge_l"]["policy"] > ev["rouge_l"]["base"]  # it learned the task's answers
    client = _client(pipeline_runs)
    stages = pipeline_runs.first["stages"]
    evaluate_run = stages["evaluate"]["mlflow_run_id"]
    assert "eval.png" in {a.path for a in client.list_artifacts(evaluate_run)}
    assert (Path(stages["evaluate"]["output"]) / "eval.png").read_bytes()[:4] == b"\x89PNG"
    for stage in ("sft", "reward", "policy"):  # training curves of every training stage
        run_id = stages[stage]["mlflow_run_id"]
        assert "training_curves.png" in {a.path for a in client.list_artifacts(run_id)}, stage
