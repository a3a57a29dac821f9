"""The launcher's command lines and the rank helpers, without starting any process (ms)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from alignflow import distributed
from alignflow.launch import DEEPSPEED_ENV, build_command, check_deepspeed_config

REPO = Path(__file__).resolve().parents[2]
ZERO2 = REPO / "infra" / "deepspeed" / "zero2.json"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def _after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_torchrun_command_starts_n_processes_of_the_stage_module_with_config_and_overrides():
    command = build_command("sft", "configs/micro.yaml", ["sft.epochs=1"], nproc=2)
    assert command[:3] == TORCHRUN
    assert "--nproc_per_node=2" in command
    # A free rendezvous port: two launches on one machine must not collide on 29500.
    assert "--standalone" in command
    assert command[-4:] == ["-m", "tasks.sft", "configs/micro.yaml", "sft.epochs=1"]


def test_accelerate_command_uses_multi_gpu_never_cpu_which_would_start_one_process():
    command = build_command("reward", "c.yaml", nproc=2, launcher="accelerate", port=29123)
    assert command[:3] == ACCELERATE
    assert "--multi_gpu" in command and "--cpu" not in command
    assert _after(command, "--num_processes") == "2"
    assert _after(command, "--main_process_port") == "29123"
    assert command[-3:] == ["-m", "tasks.reward", "c.yaml"]


def test_accelerate_starts_one_process_without_multi_gpu_which_needs_two():
    command = build_command("sft", "c.yaml", launcher="accelerate")
    assert "--multi_gpu" not in command and _after(command, "--num_processes") == "1"


def test_deepspeed_config_is_passed_to_the_stage_as_an_absolute_path_before_overrides():
    command = build_command(
        "sft", "c.yaml", ["sft.epochs=1"], deepspeed="infra/deepspeed/zero2.json"
    )
    assert "--nproc_per_node=1" in command
    assert command[-4:] == ["c.yaml", "--deepspeed", str(ZERO2), "sft.epochs=1"]


def test_one_process_without_deepspeed_has_no_deepspeed_flag():
    assert "--deepspeed" not in build_command("sft", "c.yaml")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage": "train"}, "unknown stage 'train'"),
        ({"nproc": 0}, "nproc must be at least 1"),
        ({"launcher": "mpirun"}, "launcher must be one of torchrun, accelerate"),
        ({"stage": "collect", "nproc": 2}, "'collect' does not split its work .* nproc 1"),
        ({"launcher": "accelerate", "deepspeed": ZERO2}, "one process needs --launcher torchrun"),
    ],
)
def test_bad_launch_arguments_are_refused_with_what_was_expected(kwargs, message):
    arguments = {"stage": "sft", "config_path": "c.yaml"} | kwargs
    with pytest.raises(ValueError, match=message):
        build_command(**arguments)


def test_missing_deepspeed_config_is_refused_naming_the_shipped_ones(tmp_path):
    with pytest.raises(ValueError, match=r"no such file .*infra/deepspeed/zero2\.json"):
        check_deepspeed_config(tmp_path / "zero9.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ValueError, match=r"broken\.json:1: not valid JSON"):
        check_deepspeed_config(broken)


def test_trainer_kwargs_take_deepspeed_from_the_launch_and_gloo_ddp_on_cpu(monkeypatch):
    from alignflow.models import trainer_device_kwargs

    monkeypatch.delenv(DEEPSPEED_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert {"deepspeed", "ddp_backend"}.isdisjoint(trainer_device_kwargs())
    monkeypatch.setenv(DEEPSPEED_ENV, str(ZERO2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    kwargs = trainer_device_kwargs()
    assert kwargs["deepspeed"] == str(ZERO2)
    assert kwargs["ddp_backend"] == "gloo"  # this machine has no GPU


def test_not_launched_is_one_process_of_rank_zero_and_collectives_are_identities(monkeypatch):
    import torch

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (0, 0, 1)
    assert distributed.is_main()
    assert not distributed.init_process_group_from_env()
    distributed.barrier()
    assert distributed.broadcast_object({"work": "dir"}) == {"work": "dir"}
    values = torch.tensor([1.0, 3.0])
    assert torch.equal(distributed.all_reduce_mean(values), values)
    assert distributed.device() == torch.device("cpu")


def test_rank_helpers_read_what_the_launcher_sets(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (3, 1, 4)
    assert not distributed.is_main()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["launch", "train", "configs/micro.yaml"], "error: unknown stage 'train'"),
        (["launch", "sft", "configs/micro.yaml", "--launcher", "srun"], "error: launcher must"),
        (["launch", "sft", "configs/micro.yaml", "--deepspeed", "zero9.json"], "no such file"),
        (["launch", "sft", "configs/micro.yaml", "--set", "sft.epoch=1"], "sft.epoch: unknown key"),
    ],
)
def test_launch_command_refuses_bad_input_with_exit_2_before_starting_anything(
    arguments, message, monkeypatch
):
    from typer.testing import CliRunner

    from alignflow import launch
    from alignflow.app.cli import app

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(launch, "_stream", lambda *a: pytest.fail("a process was started"))
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output
