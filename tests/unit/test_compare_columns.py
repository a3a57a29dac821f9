"""`alignflow compare` shows, beside its fixed columns, every param whose value differs between
the listed runs (a real MLflow store)."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from alignflow.compare import differing_params


def test_the_params_that_differ_between_runs_are_the_extra_columns(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("cmp", artifact_location=str(tmp_path / "art"))
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
            with mlflow.start_run(experiment_id=experiment):
                mlflow.log_params(params)
    finally:
        mlflow.set_tracking_uri(None)
    runs = MlflowClient(uri).search_runs([experiment])
    assert differing_params(runs, shown=["run.seed"]) == [
        "policy.ppo.learning_rate",
        "policy.ppo.lora.r",
    ]
    assert differing_params(runs, shown=["policy.ppo.learning_rate"]) == ["policy.ppo.lora.r"]
    assert differing_params(runs[:1], shown=[]) == []  # one run: nothing differs
