"""The training loop of the torchvision engine, and PreciseBN.

* `train_loop`: AMP (fp16 + GradScaler on CUDA, bf16 on CPU), progress, metrics.jsonl and
  TensorBoard with every loss term and the lr; stops on a non-finite loss; `PeriodicEval`
  (TEST.EVAL_PERIOD).
* `precise_bn`: TEST.PRECISE_BN (recompute BN statistics over NUM_ITER training batches).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detco_bench.engines.torchvision.distributed import mean_over_processes_
from detco_bench.engines.torchvision.settings import Settings
from detco_bench.engines.torchvision.train.checkpoint import Checkpointer
from detco_bench.engines.torchvision.train.metrics_log import MetricsLog
from detco_bench.engines.torchvision.train.solver import lr_factor, set_lr

LOG_PERIOD = 20
#: Iterations each logged scalar is the median over: Detectron2's EventStorage smooths what its
#: JSONWriter, TensorBoard writer and console printer show with window_size 20.
WINDOW = 20
#: Iterations at the start of a run left out of the logged "time", as Detectron2's IterationTimer
#: leaves them out (its warmup_iter=3 counts from 1: the first two).
TIME_WARMUP = 2


#: Called after every training iteration with (completed iterations, loss dict); tests replace it
#: to interrupt a run.
after_step: Callable[[int, dict[str, float]], None] | None = None


def _reduce(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """The loss terms (scalar tensors) as floats, averaged over the processes."""
    names = sorted(loss_dict)
    values = mean_over_processes_(torch.stack([loss_dict[k].detach().float() for k in names]))
    return {k: float(v) for k, v in zip(names, values.tolist(), strict=True)}


def _to_device(images: list[torch.Tensor], targets: list[Any], device: torch.device) -> tuple[list, list]:
    images = [i.to(device, non_blocking=True) for i in images]
    moved = []
    for t in targets:
        if isinstance(t, dict):
            moved.append({k: v.to(device, non_blocking=True) for k, v in t.items()})
        else:
            moved.append(t.to(device, non_blocking=True))
    return images, moved


class MedianWindows:
    """The last `size` values of named scalars, and their medians: what Detectron2's
    ``storage.latest_with_smoothing_hint(window_size)`` gives for scalars put with its default
    smoothing hint (each loss term, total_loss, time, data_time)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: dict[str, deque[float]] = {}

    def add(self, name: str, value: float) -> None:
        self._values.setdefault(name, deque(maxlen=self.size)).append(value)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self._values.items()}


@dataclass
class PeriodicEval:
    """TEST.EVAL_PERIOD as Detectron2's hooks run it: after every `period`-th iteration except the
    last (the final evaluation covers that), `refresh_bn` (PreciseBN, when enabled) before that
    iteration's checkpoint, then `evaluate`. Both run with the RNG state put back afterwards, so an
    evaluation never changes the training that follows (and a resumed run stays exact)."""

    period: int
    evaluate: Callable[[int], None]
    refresh_bn: Callable[[], None] | None = None

    def due(self, done: int, max_iter: int) -> bool:
        """Whether the iteration that completed `done` iterations ends with an evaluation."""
        return self.period > 0 and done % self.period == 0 and done < max_iter


def rng_neutral(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that restores the torch RNG state of the CPU (and of `device`) on exit."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def amp_settings(enabled: bool, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None, GradScaler or None): fp16 + loss scaling on CUDA, bf16 on CPU."""
    if not enabled:
        return None, None
    if device.type == "cuda":
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[list[torch.Tensor], list[Any]]],
    s: Settings,
    *,
    start_iter: int,
    device: torch.device,
    checkpointer: Checkpointer,
    log: MetricsLog,
    amp_dtype: torch.dtype | None = None,
    scaler: Any = None,
    progress: Any = None,
    logger: Callable[[str], None] = print,
    periodic: PeriodicEval | None = None,
) -> None:
    """Train from `start_iter` to SOLVER.MAX_ITER (exclusive end), checkpointing (and evaluating,
    with `periodic`) on the way."""
    max_iter = s.int("SOLVER.MAX_ITER")
    base_lr = s.float("SOLVER.BASE_LR")
    period = s.int("SOLVER.CHECKPOINT_PERIOD")
    model.train()
    # Logged as Detectron2's metrics.json has them, each the median over the last WINDOW
    # iterations: every loss term and total_loss (their sum in one iteration); "time", seconds from
    # the start of an iteration to its reduced losses (checkpoints, evaluations and progress output
    # left out); "data_time", seconds to fetch its batch. lr is the iteration's own.
    smoothed = MedianWindows(WINDOW)
    for it in range(start_iter, max_iter):
        t_start = time.perf_counter()
        images, targets = next(batches)
        images, targets = _to_device(images, targets, device)
        smoothed.add("data_time", time.perf_counter() - t_start)
        lr = set_lr(optimizer, base_lr, lr_factor(it, s))
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses).all():
            raise FloatingPointError(
                f"loss became infinite or NaN at iteration {it}: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in loss_dict.items())
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            optimizer.step()
        done = it + 1
        values = _reduce(loss_dict)
        values["total_loss"] = sum(values.values())
        if done - start_iter > TIME_WARMUP:
            smoothed.add("time", time.perf_counter() - t_start)
        for name, value in values.items():
            smoothed.add(name, value)
        if done % LOG_PERIOD == 0 or done == max_iter or it == start_iter:
            line = smoothed.medians()
            log.write(done, {**line, "lr": lr})
            logger(
                f"iter {done}/{max_iter}  loss {line['total_loss']:.4f}  "
                + "  ".join(f"{k} {line[k]:.4f}" for k in values if k != "total_loss")
                + f"  lr {lr:.6g}"
            )
        if progress is not None:
            progress(done, values["total_loss"], lr)
        evaluate = periodic is not None and periodic.due(done, max_iter)
        if evaluate and periodic.refresh_bn is not None:
            with rng_neutral(device):
                periodic.refresh_bn()
        if period > 0 and done % period == 0 and done < max_iter:
            checkpointer.save(f"model_{it:07d}.pth", model, optimizer, scaler, done)
        if evaluate:
            with rng_neutral(device):
                periodic.evaluate(done)
            model.train()
        if after_step is not None:
            after_step(done, values)


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterator[tuple[list, list]], num_iter: int, device: torch.device) -> int:
    """Recompute the running statistics of every BatchNorm as the plain average of the batch
    statistics over `num_iter` training batches (fvcore's update_bn_stats, which Detectron2's
    PreciseBN hook uses); averaged over processes afterwards. Returns the number of BN layers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_iter <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean of the batch statistics
    model.train()
    for _ in range(num_iter):
        images, targets = next(batches)
        images, targets = _to_device(images, targets, device)
        model(images, targets)
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    for m in bns:
        mean_over_processes_(m.running_mean)
        mean_over_processes_(m.running_var)
    return len(bns)
