"""The solver: Detectron2's learning-rate schedules and SGD parameter groups.

* `lr_factor`: Detectron2's WarmupMultiStepLR (and WarmupCosineLR) as a pure function of the
  iteration: linear (or constant) warm-up from WARMUP_FACTOR over WARMUP_ITERS, times GAMMA per
  milestone of STEPS reached (milestones beyond MAX_ITER are dropped, as Detectron2 does).
* `build_optimizer`: SGD (BASE_LR, MOMENTUM, NESTEROV) with Detectron2's parameter groups: norm
  layers get WEIGHT_DECAY_NORM, biases BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS (default WEIGHT_DECAY).
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from detco_bench.engines.torchvision.settings import Settings

NORM_TYPES: tuple[type, ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def lr_factor(iteration: int, s: Settings) -> float:
    """The multiplier of BASE_LR at (0-based) `iteration`."""
    max_iter = s.int("SOLVER.MAX_ITER")
    name = str(s["SOLVER.LR_SCHEDULER_NAME"])
    if name == "WarmupMultiStepLR":
        steps = sorted(int(x) for x in s.list("SOLVER.STEPS") if int(x) <= max_iter)
        factor = s.float("SOLVER.GAMMA") ** bisect.bisect_right(steps, iteration)
    elif name == "WarmupCosineLR":
        factor = 0.5 * (1.0 + math.cos(math.pi * iteration / max(max_iter, 1)))
    else:
        raise ValueError(f"SOLVER.LR_SCHEDULER_NAME {name!r}: WarmupMultiStepLR or WarmupCosineLR")
    warmup = s.int("SOLVER.WARMUP_ITERS")
    if iteration < warmup:
        wf = s.float("SOLVER.WARMUP_FACTOR")
        method = str(s["SOLVER.WARMUP_METHOD"])
        if method == "linear":
            alpha = iteration / warmup
            factor *= wf * (1 - alpha) + alpha
        elif method == "constant":
            factor *= wf
        else:
            raise ValueError(f"SOLVER.WARMUP_METHOD {method!r}: linear or constant")
    return factor


def build_optimizer(model: nn.Module, s: Settings) -> torch.optim.SGD:
    """SGD with Detectron2's parameter groups (see the module docstring); each group remembers its
    ``lr_mult`` for `set_lr`. SOLVER.CLIP_GRADIENTS is refused."""
    if bool(s["SOLVER.CLIP_GRADIENTS.ENABLED"]):
        raise ValueError("SOLVER.CLIP_GRADIENTS is not supported by the torchvision engine")
    base_lr = s.float("SOLVER.BASE_LR")
    wd = s.float("SOLVER.WEIGHT_DECAY")
    wd_norm = s["SOLVER.WEIGHT_DECAY_NORM"]
    wd_bias = s["SOLVER.WEIGHT_DECAY_BIAS"]
    bias_factor = s.float("SOLVER.BIAS_LR_FACTOR")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr_mult, decay = 1.0, wd
            if isinstance(module, NORM_TYPES) and wd_norm is not None:
                decay = float(wd_norm)
            if name == "bias" and (bias_factor != 1.0 or (wd_bias is not None and float(wd_bias) != wd)):
                lr_mult = bias_factor
                decay = float(wd_bias) if wd_bias is not None else wd
            groups.setdefault((lr_mult, decay), []).append(p)
    params = [
        {"params": ps, "lr": base_lr * m, "weight_decay": d, "lr_mult": m} for (m, d), ps in groups.items()
    ]
    return torch.optim.SGD(
        params,
        lr=base_lr,
        momentum=s.float("SOLVER.MOMENTUM"),
        nesterov=bool(s["SOLVER.NESTEROV"]),
        weight_decay=wd,
    )


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's lr to BASE_LR x `factor` x its lr_mult; returns BASE_LR x `factor`."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_mult", 1.0)
    return base_lr * factor
