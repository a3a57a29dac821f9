"""A fresh artifacts root seeded with the session pipeline's upstream stages, so the stage under
test runs anew (a stage's cache key does not depend on the root)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alignflow.pipeline import stage_dir, tracking_uri
from alignflow.store import RESULT_FILE, StageResult, code_version
from tests.conftest import micro_config


def seed_root(pipeline_runs, root: Path, stages: tuple[str, ...]) -> None:
    """Copy the session run's completed `stages` into `root`, each under its key as computed now."""
    code_version.cache_clear()  # the key the launched stage computes: the code as it is now
    cfg = micro_config(root)
    for stage in stages:
        source = Path(pipeline_runs.first["stages"][stage]["output"])
        target = stage_dir(cfg, stage).final
        shutil.copytree(source, target)
        result = StageResult.model_validate_json((target / RESULT_FILE).read_text())
        moved = result.model_copy(update={"output": str(target), "cache_key": target.name})
        (target / RESULT_FILE).write_text(moved.model_dump_json(indent=2))


@pytest.fixture
def prepared_root(pipeline_runs, tmp_path) -> Path:
    seed_root(pipeline_runs, tmp_path, ("prepare",))
    return tmp_path


@pytest.fixture
def rewarded_root(pipeline_runs, tmp_path) -> Path:
    """Every stage up to the policy's inputs: prepare, sft, collect, reward."""
    seed_root(pipeline_runs, tmp_path, ("prepare", "sft", "collect", "reward"))
    return tmp_path


def stage_runs(root: Path, stage: str) -> list:
    """Every MLflow run in `root`'s store that is named `stage`."""
    client = MlflowClient(tracking_uri(micro_config(root)))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [run for run in client.search_runs(experiments) if run.info.run_name == stage]


def weight_sizes(model_dir: Path) -> dict[str, int]:
    """Number of values in each tensor of a saved model (0 for a ZeRO-3 placeholder)."""
    import math

    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        return {name: math.prod(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
