"""`alignflow compare` shows, beside its fixed columns, every param whose value differs between
the listed runs (a real MLflow store)."""

from __future__ import annotations

from mlflow import MlflowClient

from alignflow.compare import differing_params


def test_the_params_that_differ_between_runs_are_the_extra_columns(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # no fluent (global) run state
    experiment = client.create_experiment("cmp", artifact_location=str(tmp_path / "art"))
    for params in (
        {"run.seed": "0", "policy.ppo.learning_rate": "1e-4", "sft.epochs": "2"},
        {"run.seed": "0", "policy.ppo.learning_rate": "3e-4", "sft.epochs": "2"},
        {
            "run.seed": "0",
            "policy.ppo.learning_rate": "3e-4",
            "sft.epochs": "2",
            "policy.ppo.lora.r": "8",
        },
    ):
        run = client.create_run(experiment)
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    runs = client.search_runs([experiment])
    assert differing_params(runs, shown=["run.seed"]) == [
        "policy.ppo.learning_rate",
        "policy.ppo.lora.r",
    ]
    assert differing_params(runs, shown=["policy.ppo.learning_rate"]) == ["policy.ppo.lora.r"]
    assert differing_params(runs[:1], shown=[]) == []  # one run: nothing differs


def test_only_pipeline_and_retraining_runs_are_compared_not_a_stage_run_alone(tmp_path):
    """A stage run of `alignflow launch` (no parent, tagged with its stage) has no evaluation: it
    is not a row of its own, nor is any pipeline's child stage run."""
    from alignflow.compare import top_level_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cmp", artifact_location=str(tmp_path / "art"))
    pipeline = client.create_run(experiment, tags={"alignflow.flow": "rlhf"}).info.run_id
    client.create_run(experiment, tags={"stage": "sft", "mlflow.parentRunId": pipeline})
    client.create_run(experiment, tags={"stage": "sft"})  # alignflow launch sft …
    retrain = client.create_run(experiment, tags={"alignflow.flow": "retrain"}).info.run_id
    runs = top_level_runs(uri, "cmp", limit=10)
    assert sorted(run.info.run_id for run in runs) == sorted([pipeline, retrain])
