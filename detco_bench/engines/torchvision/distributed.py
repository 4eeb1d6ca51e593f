"""The torchvision engine's process group: joining it, and the collectives the engine uses.

A job is one process (CPU or one GPU), N processes per machine spawned by `engine.run` that join
the group at ``--dist-url``, or processes started by torchrun / a Slurm task (submitit) that join
the group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK). NCCL on
GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from detco_bench.transfer.plan import TransferPlan


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in the job; `created` when it joined the group itself (and must
    leave it)."""

    rank: int
    world: int
    local_rank: int
    created: bool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join(plan: TransferPlan, local_rank: int | None, dist_url: str | None) -> ProcessGroup:
    """Join the process group if this job has several processes (`local_rank` is set for the
    processes `engine.run` spawns)."""
    cuda = plan.device == "cuda"
    backend = "nccl" if cuda else "gloo"
    if dist.is_available() and dist.is_initialized():
        lr = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), lr, False)
    if local_rank is not None:
        rank = plan.machine_rank * plan.gpus + local_rank
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=plan.world_size, rank=rank)
        return ProcessGroup(rank, plan.world_size, local_rank, True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lr = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:  # torchrun / submitit environment
        if cuda:
            torch.cuda.set_device(lr)
        dist.init_process_group(backend=backend, init_method="env://")
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), lr, True)
    return ProcessGroup(0, 1, 0, False)


def leave(group: ProcessGroup) -> None:
    """Leave the process group if `join` created it."""
    if group.created:
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Whether several processes take part."""
    return rank_and_world()[1] > 1


def gather_to_main(obj: Any) -> list[Any] | None:
    """[obj of every rank] on rank 0, None elsewhere."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait for every process (nothing to wait for alone)."""
    if is_distributed():
        dist.barrier()


def mean_over_processes_(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` replaced in place by its mean over the processes of the group (unchanged alone)."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor
