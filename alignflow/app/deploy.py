"""`alignflow deploy`: the deployments of infra/prefect.yaml on the Prefect server PREFECT_API_URL
names, the process work pool they run on, the `gpu` concurrency limit, and a worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

# The checkout flows run from (infra/prefect.yaml's pull step); the images set /app.
HOME_ENV = "ALIGNFLOW_HOME"
PREFECT_FILE = Path("infra", "prefect.yaml")  # relative to the checkout


class DeployError(RuntimeError):
    """Deployment cannot go on; the message says what to do."""


def home() -> Path:
    """The checkout: ALIGNFLOW_HOME, else the source tree this module was imported from."""
    path = Path(os.environ.get(HOME_ENV) or Path(__file__).resolve().parents[2])
    if not (path / PREFECT_FILE).is_file():
        raise DeployError(f"no {PREFECT_FILE} under {path}: set {HOME_ENV} to the checkout")
    return path


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeployError(
            "PREFECT_API_URL is not set: start a server (prefect server start --host 127.0.0.1) "
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return url


def work_pools() -> list[str]:
    """The work pools infra/prefect.yaml's deployments run on."""
    deployments = yaml.safe_load((home() / PREFECT_FILE).read_text())["deployments"]
    return sorted({d["work_pool"]["name"] for d in deployments})


def ensure_process_pool(name: str) -> bool:
    """Create the process work pool `name` unless it exists; True when created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
    if pool.type != "process":
        raise DeployError(f"work pool {name} exists with type {pool.type}, not process")
    return False


def ensure_gpu_limit(name: str, slots: int) -> None:
    """The global concurrency limit `name` with `slots` slots (one per accelerator)."""
    from prefect import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots)
            )
            return
        if current.limit != slots or not current.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
            )


def worker_env() -> dict[str, str]:
    return dict(os.environ, **{HOME_ENV: str(home())})


def deploy_all() -> None:
    """`prefect deploy --all` on infra/prefect.yaml, from the checkout (entrypoints are relative
    to it)."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(PREFECT_FILE)]  # fmt: skip
    done = subprocess.run(command, cwd=home(), env=worker_env(), text=True)
    if done.returncode:
        raise DeployError(f"prefect deploy failed (exit {done.returncode}); its output is above")


def worker_command(pool: str) -> list[str]:
    return [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
