"""The deployed stack, end to end: PostgreSQL (Debian's, as the `postgres` user) behind a Prefect
server and an MLflow server, all on 127.0.0.1; `alignflow deploy` creates the work pool, the gpu
limit and the deployments and runs a worker; `prefect deployment run … --param` triggers the
pipeline, and the MLflow runs and the registered model are checked on the MLflow server."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from alignflow.launch import free_port
from tests.conftest import REPO, micro_config
from tests.flow.conftest import ARTIFACTS, button, wait_for

pytestmark = pytest.mark.slow  # three servers and a worker: `make test-all`

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: CI runs as root, so run it as `postgres` there."""
    if os.geteuid() == 0:
        return ["su", "postgres", "-c", shlex.join(command)]
    return command


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 with databases `prefect` and `mlflow`."""
    assert (PG_BIN / "initdb").exists(), "PostgreSQL 15 is missing: apt-get install postgresql"
    directory = Path(tempfile.mkdtemp(prefix="alignflow-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", free_port()
    server_options = f"-p {port} -k {directory} -h 127.0.0.1"
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                                 "-U", "postgres", "--no-sync"]), check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                                 str(directory / "log"), "-w", "-o", server_options, "start"]),
                   check=True, capture_output=True)  # fmt: skip
    try:
        for database in ("prefect", "mlflow"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "-c", f"CREATE DATABASE {database}"], check=True,
                           capture_output=True)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast",
                                     "stop"]), capture_output=True)  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)


def _serve(command: list[str], env: dict, log: Path, health: str) -> subprocess.Popen:
    with log.open("w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: httpx.get(health, timeout=2).status_code == 200, 120)
    return server


@pytest.fixture(scope="module")
def stack(postgres, tmp_path_factory):
    """MLflow server (PostgreSQL + a local artifact root) and Prefect server (PostgreSQL, UI on),
    then `alignflow deploy` with its worker. Yields the URLs, the environment and the folder."""
    home = tmp_path_factory.mktemp("deployed")
    mlflow_port, prefect_port = free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = dict(
        os.environ, PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=api,
        PREFECT_UI_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://postgres@{postgres}/prefect",
        HF_HUB_OFFLINE="1",
    )  # fmt: skip
    servers = [
        _serve([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                "--port", str(mlflow_port), "--workers", "1",
                "--backend-store-uri", f"postgresql+psycopg://postgres@{postgres}/mlflow",
                "--artifacts-destination", str(home / "mlartifacts")],
               env, home / "mlflow.log", f"{mlflow_url}/health"),
        _serve([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                "--port", str(prefect_port)], env, home / "prefect.log", f"{api}/health"),
    ]  # fmt: skip
    deploy_log = (home / "deploy.log").open("w")
    deploy = subprocess.Popen(
        [sys.executable, "-m", "alignflow.app.cli", "deploy", "--gpu-slots", "1"],
        cwd=REPO, env=env, stdout=deploy_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    servers.append(deploy)
    try:
        workers = f"{api}/work_pools/alignflow-process/workers/filter"

        def worker_polls() -> bool:  # `alignflow deploy` starts its worker after deploying
            response = httpx.post(workers, json={}, timeout=5)
            return response.status_code == 200 and len(response.json()) > 0

        wait_for(worker_polls, 300)
        yield {"api": api, "mlflow": mlflow_url, "env": env, "home": home}
    finally:
        for process in reversed(servers):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        deploy_log.close()


def _deployment_config(stack, updates: int) -> dict:
    cfg = micro_config(
        stack["home"] / "runs", f"run.mlflow_tracking_uri={stack['mlflow']}",
        f"policy.ppo.updates={updates}", "policy.ppo.checkpoint_every=4",
    )  # fmt: skip
    return cfg.model_dump(mode="json")


def _run_deployment(stack, config: dict) -> str:
    """`prefect deployment run rlhf/rlhf-tiny --param config=…`; returns the flow run's id."""
    started = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "rlhf/rlhf-tiny",
         "--param", f"config={json.dumps(config)}"],
        env=stack["env"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    return re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)


def _top_level_runs(client, experiment_id: str, flow_run_id: str) -> list:
    """The MLflow runs of a Prefect flow run that are not a stage (child) run."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def wait_for_flow_run(stack, flow_run_id: str, seconds: float = 900) -> dict:
    def finished():
        run = httpx.get(f"{stack['api']}/flow_runs/{flow_run_id}", timeout=10).json()
        return run if run["state"] and run["state"]["type"] in DONE else None

    run = wait_for(finished, seconds)
    log = (stack["home"] / "deploy.log").read_text()[-4000:]
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{log}"
    return run


def test_alignflow_deploy_sets_up_the_pool_the_gpu_limit_and_both_deployments(stack):
    api = stack["api"]
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"rlhf-tiny", "retrain-nightly"}
    (schedule,) = by_name["retrain-nightly"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["active"]
    # the UI's parameter form: the PipelineConfig type, sections as groups
    schema = by_name["rlhf-tiny"]["parameter_openapi_schema"]
    assert "PipelineConfig" in json.dumps(schema["properties"]["config"])
    gpu = httpx.get(f"{api}/v2/concurrency_limits/gpu", timeout=10).json()
    assert gpu["limit"] == 1 and gpu["active"]


def test_deployment_run_with_a_param_trains_tracks_and_registers_on_the_servers(stack):
    from mlflow import MlflowClient

    config = _deployment_config(stack, updates=8)
    flow_run_id = _run_deployment(stack, config)
    run = wait_for_flow_run(stack, flow_run_id)
    assert run["parameters"]["config"]["policy"]["ppo"]["updates"] == 8

    client = MlflowClient(stack["mlflow"])
    experiment = client.get_experiment_by_name(config["run"]["experiment"])
    (parent,) = _top_level_runs(client, experiment.experiment_id, flow_run_id)
    assert parent.info.status == "FINISHED"
    assert (
        parent.data.params["policy.ppo.updates"] == "8"
    )  # the parameter given on the command line
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert {child.data.tags["stage"] for child in children} == {
        "prepare", "sft", "collect", "reward", "policy", "evaluate", "register",
    }  # fmt: skip
    assert all(c.data.tags["prefect.flow_run_id"] == flow_run_id for c in children)
    champion = client.get_model_version_by_alias(config["registry"]["model_name"], "champion")
    register = next(c for c in children if c.data.tags["stage"] == "register")
    assert champion.run_id == register.info.run_id
    # the weights went through the server to its artifact root on disk
    weights = list((stack["home"] / "mlartifacts").rglob("model.safetensors"))
    assert weights, "no model weights under the MLflow server's artifact root"
    # the flow run links its MLflow run
    artifacts = httpx.post(
        f"{stack['api']}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}, timeout=10,
    ).json()  # fmt: skip
    (link,) = [a["data"] for a in artifacts if a["key"] == "alignflow-mlflow"]  # a markdown link
    page = f"{stack['mlflow']}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
    assert page in link


def _deployment_id(stack, name: str) -> str:
    deployments = httpx.post(f"{stack['api']}/deployments/filter", json={}, timeout=10).json()
    return next(d["id"] for d in deployments if d["name"] == name)


def _flow_run_ids(stack, deployment: str) -> set[str]:
    query = {"flow_runs": {"deployment_id": {"any_": [deployment]}}}
    runs = httpx.post(f"{stack['api']}/flow_runs/filter", json=query, timeout=10).json()
    return {run["id"] for run in runs}


def _form_input(browser, section: str, field: str):
    """The input of `field` inside the form group `section` of the deployment's run form."""
    from selenium.webdriver.common.by import By

    prop = "ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]"
    group = f"//span[text()='{section} (Optional)']/{prop}"
    own = f"//span[text()='{field} (Optional)']/{prop}//input"
    return wait_for(lambda: next(iter(browser.find_elements(By.XPATH, group + own)), None), 60)


def test_a_run_submitted_from_the_deployment_form_in_the_ui_uses_the_changed_parameter(
    stack, browser
):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

    # The team's defaults for this deployment: the micro config on the test's servers.
    deployment = _deployment_id(stack, "rlhf-tiny")
    defaults = {"config": _deployment_config(stack, updates=8)}
    httpx.patch(f"{stack['api']}/deployments/{deployment}", json={"parameters": defaults},
                timeout=10).raise_for_status()  # fmt: skip
    ui = stack["api"].removesuffix("/api")
    browser.get(f"{ui}/deployments/deployment/{deployment}/run")
    updates = _form_input(browser, "Ppo", "Updates")
    assert updates.get_attribute("value") == "8"  # the form opens on the deployment's parameters
    updates.clear()
    updates.send_keys("6")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "prefect-ui-deployment-form.png"))
    before = _flow_run_ids(stack, deployment)
    button(browser, "Submit").click()
    (flow_run_id,) = wait_for(lambda: _flow_run_ids(stack, deployment) - before, 60)
    run = wait_for_flow_run(stack, flow_run_id)
    browser.get(f"{ui}/runs/flow-run/{flow_run_id}")
    wait_for(lambda: browser.find_elements(By.XPATH, "//*[text()='Completed']"), 60)
    browser.save_screenshot(str(ARTIFACTS / "prefect-ui-deployment-run.png"))

    assert run["parameters"]["config"]["policy"]["ppo"]["updates"] == 6
    client = MlflowClient(stack["mlflow"])
    experiment = client.get_experiment_by_name(defaults["config"]["run"]["experiment"])
    (parent,) = _top_level_runs(client, experiment.experiment_id, flow_run_id)
    assert parent.data.params["policy.ppo.updates"] == "6"
    assert (ARTIFACTS / "prefect-ui-deployment-form.png").stat().st_size > 10_000


def _flow_run(stack, flow_run_id: str) -> dict:
    return httpx.get(f"{stack['api']}/flow_runs/{flow_run_id}", timeout=10).json()


def test_human_labels_in_suspend_mode_free_the_worker_between_batches(stack):
    """`human.wait: suspend`: each batch suspends the run (its process exits); an answer
    schedules it again, and the run goes on from where it was, in the same MLflow run."""
    from mlflow import MlflowClient

    config = _deployment_config(stack, updates=2)
    config["collect"]["max_prompts"] = 5
    config["collect"]["labelers"] = [
        {"kind": "human", "human": {"batch_size": 3, "timeout_s": 600, "wait": "suspend"}}
    ]
    config["evaluate"]["samples_per_prompt"] = 1
    flow_run_id = _run_deployment(stack, config)

    def suspended_or_done():
        run = _flow_run(stack, flow_run_id)
        state = run["state"] or {}
        return run if state.get("name") == "Suspended" or state.get("type") in DONE else None

    suspensions = 0
    while True:
        run = wait_for(suspended_or_done, 600)
        if run["state"]["type"] in DONE:
            break
        suspensions += 1
        keyset = run["state"]["state_details"]["run_input_keyset"]
        schema = httpx.get(
            f"{stack['api']}/flow_runs/{flow_run_id}/input/{keyset['schema']}", timeout=10
        ).json()
        answer = {"labeler_name": "suspended"} | {field: "A" for field in schema["required"]}
        resumed = httpx.post(f"{stack['api']}/flow_runs/{flow_run_id}/resume",
                             json={"run_input": answer}, timeout=30).json()  # fmt: skip
        assert resumed["status"] == "ACCEPT", resumed
        wait_for(lambda: _flow_run(stack, flow_run_id)["state"]["name"] != "Suspended", 60)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert suspensions == 2  # comparisons 1-3, then 4-5

    client = MlflowClient(stack["mlflow"])
    experiment = client.get_experiment_by_name(config["run"]["experiment"])
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"  # one MLflow run across the three executions
    collects = [r for r in runs if r.data.tags.get("stage") == "collect"]
    assert sorted(r.info.status for r in collects) == ["FINISHED", "KILLED", "KILLED"]
    records = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "summary.json")).read_text()
    )["stages"]["collect"]["output"]
    labelled = [
        json.loads(line) for line in Path(records, "records.jsonl").read_text().splitlines()
    ]
    assert labelled and {r["labeler"] for r in labelled} == {"human:suspended"}
