"""A real Prefect server for the tests that pause a flow run for people's labels."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import httpx
import pytest

from alignflow.launch import free_port
from tests.conftest import REPO


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 with its own SQLite database and the UI (pointed at
    this server's API); yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=api)  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],  # fmt: skip
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 90)
        yield api
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for(ready, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = ready()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"not ready after {seconds} s")


def paused_run(api: str) -> dict | None:
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    paused = [run for run in runs if run["state"] and run["state"]["type"] == "PAUSED"]
    return paused[0] if paused else None


def start_labelled_pipeline(pipeline_runs, root, api: str, prompts: int, batch: int):
    """`alignflow run` of the micro pipeline against the server at `api`, with a `human` labeler
    on the first `prompts` preference prompts (`batch` per pause), prepare and sft reused from the
    session run. Returns (process, overrides, env, open log file)."""
    from tests.dist.conftest import seed_root

    seed_root(pipeline_runs, root, ("prepare", "sft"))
    overrides = [
        f"run.artifacts_root={root}",
        f"collect.max_prompts={prompts}",
        "data.min_examples=4",  # a few labelled prompts give a few pairs
        f"collect.labelers=[{{kind: human, human: {{batch_size: {batch}, timeout_s: 600}}}}]",
        "policy.ppo.updates=2",
        "evaluate.samples_per_prompt=1",
    ]
    command = [sys.executable, "-m", "alignflow.app.cli", "run", "configs/micro.yaml"]
    command += [part for item in overrides for part in ("--set", item)]
    env = dict(os.environ, PREFECT_API_URL=api)
    log = (root / "run.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, overrides, env, log


# ---- a headless browser: Debian's chromium driven by Selenium, never a downloaded one ----

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2000")  # fmt: skip


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def button(scope, text: str):
    from selenium.webdriver.common.by import By

    return wait_for(
        lambda: next((b for b in scope.find_elements(By.TAG_NAME, "button")
                      if b.text.strip() == text and b.is_displayed()), None), 60,
    )  # fmt: skip


def run_config(config: str, root, timeout: float) -> dict:
    """`alignflow run CONFIG` as a user types it, artifacts under `root`; the run's summary.json."""
    import json

    result = subprocess.run(
        [sys.executable, "-m", "alignflow.app.cli", "run", config,
         "--set", f"run.artifacts_root={root}"],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "latest" / "summary.json").read_text())


@contextlib.contextmanager
def alignflow_serve(ref: str, work, *options: str):
    """`alignflow serve REF OPTIONS` on a free 127.0.0.1 port, logging to `work`/serve.log;
    yields (base URL, process) once /health answers, and stops it on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "alignflow.app.cli", "serve", ref, "--port", str(port),
               "--engine", "transformers", *options]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(work / "hf_cache"))
    log = (work / "serve.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, (work / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
