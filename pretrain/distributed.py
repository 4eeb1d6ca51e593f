"""torch.distributed helpers with MoCo's semantics; every function is a no-op on one process
(where `pretrain.split_bn` gives the encoders shuffle-BN's behaviour instead)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env() -> torch.device:
    """Join the process group that torchrun describes (env:// init) and pick this rank's device.

    Single process (no WORLD_SIZE > 1): no process group; CUDA device 0 if present, else CPU.
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if n > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return device


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on every rank -> (world * B, ...), ordered by rank. No gradient flows back."""
    n = world_size()
    if n == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def batch_shuffle(*xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Shuffle-BN, step 1: gather the global batch and give each rank a random slice of it, so
    the key encoder's BN statistics are not computed on the same samples as the query's.

    Returns this rank's shuffled tensors (each (B, ...)) and the index that undoes the shuffle.
    All tensors share one permutation (an image and its patch set stay together).
    """
    n = world_size()
    if n == 1:
        return list(xs), torch.arange(xs[0].shape[0], device=xs[0].device)
    gathered = [concat_all_gather(x) for x in xs]
    total = gathered[0].shape[0]
    perm = torch.randperm(total, device=xs[0].device)
    dist.broadcast(perm, src=0)
    mine = perm.view(n, -1)[rank()]
    return [g[mine] for g in gathered], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN, step 2: this rank's outputs (B, ...) back in the original sample order."""
    n = world_size()
    if n == 1:
        return x
    return concat_all_gather(x)[unshuffle.view(n, -1)[rank()]]


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging)."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()
