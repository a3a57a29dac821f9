"""Properties of the deployment files under infra/ and docker/ that nothing else would catch
until someone deploys: they parse, they point at code that exists, GPUs are requested, ports stay
on loopback, images install torch before the project and drop root."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).parents[2]
INFRA = REPO_ROOT / "infra"
DOCKERFILES = [REPO_ROOT / "docker" / "Dockerfile.cpu", REPO_ROOT / "docker" / "Dockerfile.cuda"]
PLACEHOLDER = re.compile(r"{{\s*([\w.\-\[\]$]+)\s*}}")


def _load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _work_pool(name: str) -> dict:
    return _load_json(INFRA / "work-pools" / f"{name}.json")


def _deepspeed(name: str) -> dict:
    return _load_json(INFRA / "deepspeed" / f"{name}.json")


@pytest.mark.parametrize(
    "path",
    sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")]),
    ids=lambda p: str(p.relative_to(REPO_ROOT)),
)
def test_every_infra_yaml_file_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(_load_yaml(path), dict)


@pytest.mark.parametrize(
    "path", sorted(INFRA.rglob("*.json")), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_every_infra_json_file_parses_to_an_object(path: Path) -> None:
    assert isinstance(_load_json(path), dict)


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in _load_yaml(INFRA / "prefect.yaml")["deployments"]}


def test_prefect_yaml_deploys_the_pipeline_and_the_retraining_flow_on_the_process_pool() -> None:
    deployments = _deployments()
    assert set(deployments) == {"rlhf-tiny", "retrain-nightly"}
    assert deployments["rlhf-tiny"]["entrypoint"] == "flows/rlhf.py:rlhf"
    assert deployments["retrain-nightly"]["entrypoint"] == "flows/retrain.py:retrain"
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == "alignflow-process"
        assert deployment["parameters"] == {}  # the form comes from the PipelineConfig type
        assert "gpu" not in deployment["tags"]  # GPU stages hold slots of the gpu limit instead


def test_retraining_is_scheduled_nightly_by_cron() -> None:
    (schedule,) = _deployments()["retrain-nightly"]["schedules"]
    assert schedule["cron"] == "0 3 * * *" and schedule["active"] is True
    from prefect.client.schemas.schedules import CronSchedule

    # Prefect's own schedule model validates the expression and the time zone
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]).timezone == "UTC"


def test_prefect_yaml_is_accepted_by_prefects_own_model() -> None:
    # Private module, so a Prefect upgrade may move it: skip rather than fail on that.
    models = pytest.importorskip("prefect.cli.deploy._models")
    parsed = models.PrefectYamlModel.model_validate(_load_yaml(INFRA / "prefect.yaml"))
    assert [d.name for d in parsed.deployments] == ["rlhf-tiny", "retrain-nightly"]


@pytest.mark.parametrize("name", ["rlhf-tiny", "retrain-nightly"])
def test_prefect_yaml_entrypoint_names_a_flow_function_that_exists(name: str) -> None:
    deployment = _deployments()[name]
    file_part, function = deployment["entrypoint"].split(":")
    flow_file = REPO_ROOT / file_part
    assert flow_file.is_file(), f"{deployment['entrypoint']}: {flow_file} does not exist"
    assert re.search(rf"^(async )?def {function}\(", flow_file.read_text(), re.MULTILINE)


@pytest.mark.parametrize("pool", ["docker", "kubernetes"])
def test_work_pool_template_declares_every_variable_its_job_configuration_uses(pool: str) -> None:
    # The same check the Prefect server runs when a pool is created from the template.
    template = _work_pool(pool)
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"


def test_docker_work_pool_requests_all_nvidia_gpus_by_default() -> None:
    template = _work_pool("docker")
    (request,) = template["job_configuration"]["container_create_kwargs"]["device_requests"]
    assert request["driver"] == "nvidia"
    assert request["capabilities"] == [["gpu"]]
    assert request["count"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] == -1


def test_kubernetes_work_pool_limits_nvidia_gpus() -> None:
    template = _work_pool("kubernetes")
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] >= 1


@pytest.mark.parametrize(("name", "stage"), [("zero2", 2), ("zero3", 3), ("zero2_offload", 2)])
def test_deepspeed_config_has_its_zero_stage_and_leaves_batch_sizes_to_the_trainer(
    name: str, stage: int
) -> None:
    config = _deepspeed(name)
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    assert config["gradient_accumulation_steps"] == "auto"


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_default_deepspeed_configs_do_not_offload_to_cpu(name: str) -> None:
    zero = _deepspeed(name)["zero_optimization"]
    for key in ("offload_optimizer", "offload_param"):
        assert zero.get(key, {}).get("device", "none") == "none"


def test_offload_deepspeed_config_puts_the_optimizer_on_cpu() -> None:
    zero = _deepspeed("zero2_offload")["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"


def test_accelerate_ddp_config_starts_two_data_parallel_processes() -> None:
    config = _load_yaml(INFRA / "accelerate" / "ddp.yaml")
    assert config["distributed_type"] == "MULTI_GPU"
    assert config["num_processes"] == 2
    assert config["num_machines"] == 1


def _published_ports(service: dict) -> list[str]:
    """Each published port as "host_ip:published:target" (short syntax) or its long-form parts."""
    return [
        f"{p.get('host_ip', '')}:{p.get('published')}:{p.get('target')}"
        if isinstance(p, dict)
        else str(p)
        for p in service["ports"]
    ]


def test_compose_publishes_ports_only_on_loopback() -> None:
    services = _load_yaml(INFRA / "compose.yaml")["services"]
    published = {
        name: _published_ports(service) for name, service in services.items() if "ports" in service
    }
    assert {"prefect-server", "mlflow", "minio"} <= published.keys()
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port!r} beyond loopback"


def test_compose_worker_is_built_from_the_cpu_dockerfile() -> None:
    worker = _load_yaml(INFRA / "compose.yaml")["services"]["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert (INFRA / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()


def test_compose_mlflow_image_installs_the_driver_its_backend_uri_names() -> None:
    mlflow = _load_yaml(INFRA / "compose.yaml")["services"]["mlflow"]
    (driver,) = re.findall(r"postgresql\+(\w+)://", " ".join(mlflow["command"]))
    dockerfile = INFRA / mlflow["build"]["context"] / mlflow["build"]["dockerfile"]
    assert re.search(rf"pip install .*\b{driver}\b", dockerfile.read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not on PATH")
def test_compose_file_validates_with_docker_compose() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(INFRA / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _instructions(dockerfile: Path) -> list[str]:
    """Dockerfile instructions, one string each, with line continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_pinned_torch_in_its_own_layer_before_the_project(
    dockerfile: Path,
) -> None:
    steps = _instructions(dockerfile)
    torch_step = next(i for i, s in enumerate(steps) if "torch==2.13.0" in s)
    project_step = next(i for i, s in enumerate(steps) if re.search(r"pip install \.(\s|$)", s))
    assert torch_step < project_step
    assert "pip install ." not in steps[torch_step]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = [s.split()[1] for s in _instructions(dockerfile) if s.startswith("USER ")]
    assert users, f"{dockerfile.name} never switches USER"
    assert users[-1] not in {"root", "0"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_are_pinned_by_tag(dockerfile: Path) -> None:
    for step in _instructions(dockerfile):
        if step.startswith("FROM "):
            image = step.split()[1]
            assert ":" in image and not image.endswith(":latest"), step
