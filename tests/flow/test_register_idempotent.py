"""Registration is idempotent by content: the same policy registered again (a rerun, a run that
changed only an evaluation setting) is the same version; a registration killed between its
registry calls is finished by the rerun, which leaves one champion and no duplicate."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from alignflow import tracking


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {
        alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()
    }


def _policy_dir(pipeline_runs, stage: str, folder: str) -> Path:
    return Path(pipeline_runs.first["stages"][stage]["output"]) / folder


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = tracking.open_experiment(uri, "registry-test", tmp_path)
    with mlflow.start_run(experiment_id=experiment):
        yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def test_the_same_policy_twice_is_one_version_and_another_is_a_challenger(pipeline_runs, store):
    policy = _policy_dir(pipeline_runs, "policy", "policy")
    first = tracking.register_policy(policy, "idem", [])
    again = tracking.register_policy(policy, "idem", [])
    assert (first["version"], first["alias"], first["reused"]) == ("1", "champion", False)
    assert (again["version"], again["alias"], again["reused"]) == ("1", "champion", True)

    other = tracking.register_policy(_policy_dir(pipeline_runs, "sft", "model"), "idem", [])
    assert (other["version"], other["alias"]) == ("2", "challenger")
    assert len(store.search_model_versions("name='idem'")) == 2
    assert _aliases(store, "idem") == {"champion": "1", "challenger": "2"}


def test_a_registration_killed_before_its_alias_is_finished_by_the_rerun(
    pipeline_runs, store, monkeypatch
):
    policy = _policy_dir(pipeline_runs, "policy", "policy")

    def killed(*args, **kwargs):  # the process dies between the version and its alias
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "set_registered_model_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            tracking.register_policy(policy, "killed", [])
    assert len(store.search_model_versions("name='killed'")) == 1
    assert _aliases(store, "killed") == {}

    rerun = tracking.register_policy(policy, "killed", [])
    assert (rerun["version"], rerun["alias"], rerun["reused"]) == ("1", "champion", True)
    assert len(store.search_model_versions("name='killed'")) == 1
    assert _aliases(store, "killed") == {"champion": "1"}
