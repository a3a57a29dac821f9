"""Shared fixtures. One real pipeline run (Prefect flow + SQLite MLflow, configs/micro.yaml) is
made once per session and read by every flow and stage test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

# Offline and quiet: tests never reach a hub or a telemetry endpoint.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every test names its own MLflow store; a developer's server must never receive test runs.
os.environ.pop("ALIGNFLOW_TRACKING_URI", None)


@dataclass
class PipelineRuns:
    cfg: object
    root: Path
    first: dict  # summary of the first run (every stage computed)
    second: dict  # summary of the same command run again (every stage cached)
    flow_run_states: list[str]
    artifact_keys: list[str]


def micro_config(root: Path, *overrides: str):
    from alignflow.config import load_config

    return load_config(REPO / "configs" / "micro.yaml", [f"run.artifacts_root={root}", *overrides])


@pytest.fixture(scope="session")
def pipeline_runs(tmp_path_factory) -> PipelineRuns:
    from prefect import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.rlhf import rlhf

    root = tmp_path_factory.mktemp("pipeline")
    cfg = micro_config(root)
    with prefect_test_harness():
        first = rlhf(config=cfg)
        second = rlhf(config=cfg)
        with get_client(sync_client=True) as client:
            states = [run.state.type.value for run in client.read_flow_runs()]
            keys = [artifact.key for artifact in client.read_artifacts()]
    return PipelineRuns(cfg, root, first, second, states, keys)
