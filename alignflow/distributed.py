"""The one place that knows about ranks: who this process is, and how processes agree and wait.

A launcher (torchrun, accelerate, deepspeed; see launch.py) starts N copies of a stage and tells
each its place through the environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). Started
any other way (the Prefect flow, plain `python`), there is one process and every helper here is a
no-op that never imports torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def rank() -> int:
    """This process's index among all processes (0 when not launched)."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's index on its own machine: which GPU it drives."""
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """How many processes run this stage (1 when not launched)."""
    return _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """Rank 0: the one process that writes files, owns the MLflow run and logs."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its own GPU by local rank, or the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def backend() -> str:
    """nccl between GPUs; gloo on CPU (nccl cannot move CPU tensors)."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group_from_env() -> bool:
    """Join the launcher's process group (env:// rendezvous) when there is more than one process.

    Idempotent, and safe before a Trainer: accelerate and DeepSpeed reuse an initialized group.
    Returns whether a process group is (now) initialized.
    """
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # before the first collective: nccl binds to this device
            torch.cuda.set_device(device())
        dist.init_process_group(backend=backend(), rank=rank(), world_size=world_size())
    return True


def barrier() -> None:
    """Wait until every rank reaches this point."""
    if init_process_group_from_env():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (anything picklable); other ranks' `obj` is ignored."""
    if not init_process_group_from_env():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    # nccl moves the pickled bytes through this rank's GPU; gloo through the CPU.
    on = device() if dist.get_backend() == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=on)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all ranks (a new tensor; the input is left as it was).

    For metrics and statistics (e.g. whitening advantages over the global batch); gradients are
    averaged by DDP/DeepSpeed themselves.
    """
    if not init_process_group_from_env():
        return tensor.clone()
    import torch.distributed as dist

    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / world_size()


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape on each), concatenated along dim 0 in rank order."""
    if not init_process_group_from_env():
        return tensor.clone()
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def average_gradients(parameters) -> None:
    """Replace each parameter's gradient by its mean over all ranks: data parallelism for a loop
    that owns its optimizer (the PPO engine), where every rank holds a full replica."""
    if not init_process_group_from_env():
        return
    import torch.distributed as dist

    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size()


def shutdown() -> None:
    """Leave the process group once every rank is done: a process that exits with gloo's threads
    still running can abort ("terminate called without an active exception")."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
