"""`compute.sft: {nproc: 2}`: the sft task of a real Prefect flow launches the stage on two torchrun
processes (gloo DDP), streams their output to the Prefect log, and the stage's MLflow run is a
child of the pipeline's run, tagged with the flow run and the process count."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from prefect import flow, get_client, runtime
from prefect.testing.utilities import prefect_test_harness

from alignflow.pipeline import PipelineRun, stage_dir, tracking_uri
from tasks.sft import sft_task
from tests.conftest import micro_config
from tests.dist.conftest import seed_root


@flow
def _sft_only(cfg) -> dict:
    run = PipelineRun(cfg, flow_run_id=str(runtime.flow_run.id))
    result = run.stage("sft", sft_task, cfg, run.ctx, stage_dir(cfg, "prepare").load())
    return {"result": result, "parent": run.ctx.parent_run_id, "flow_run": str(runtime.flow_run.id)}


# slow (30-70 s): the family matrix (tests/flow/test_families.py) took its place in make test's
# 20 minutes; it runs under make test-all
@pytest.mark.slow
def test_sft_task_launches_two_processes_and_streams_them_to_the_prefect_log(
    pipeline_runs, tmp_path
):
    seed_root(pipeline_runs, tmp_path, ("prepare",))
    cfg = micro_config(tmp_path, "compute={sft: {nproc: 2}}", "sft.epochs=1.6")
    with prefect_test_harness():
        out = _sft_only(cfg)
        with get_client(sync_client=True) as client:
            logs = [log.message for log in client.read_logs()]
    result = out["result"]
    assert result.status == "completed"
    assert result.metrics["final_loss"] < result.metrics["first_loss"]
    assert any(m.startswith("alignflow launch: ") and "--nproc_per_node=2" in m for m in logs)
    assert any('"stage": "sft"' in m for m in logs)  # rank 0 printed its result: streamed too

    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["alignflow.world_size"] == "2"
    assert run.data.tags["mlflow.parentRunId"] == out["parent"]
    assert run.data.tags["prefect.flow_run_id"] == out["flow_run"]
