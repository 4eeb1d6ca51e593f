"""Solver, training loop, checkpoints and resume of the torchvision engine.

* `lr_factor`: Detectron2's WarmupMultiStepLR (and WarmupCosineLR) as a pure function of the
  iteration: linear (or constant) warm-up from WARMUP_FACTOR over WARMUP_ITERS, times GAMMA per
  milestone of STEPS reached (milestones beyond MAX_ITER are dropped, as Detectron2 does).
* `build_optimizer`: SGD (BASE_LR, MOMENTUM, NESTEROV) with Detectron2's parameter groups: norm
  layers get WEIGHT_DECAY_NORM, biases BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS (default WEIGHT_DECAY).
* `Checkpointer`: ``model_<iter:07d>.pth`` every CHECKPOINT_PERIOD iterations and
  ``model_final.pth``, written atomically by rank 0, named in ``last_checkpoint`` (the file
  detco-bench's transfer state looks for). A checkpoint holds the model, optimizer, grad scaler,
  the number of completed iterations and every rank's torch RNG state, so a resumed run continues
  at exactly the saved iteration with the same data order and augmentation.
* `train_loop`: AMP (fp16 + GradScaler on CUDA, bf16 on CPU), rich progress, metrics.jsonl and
  TensorBoard (``tb/``) with every loss term and the lr; stops on a non-finite loss.
* `precise_bn`: TEST.PRECISE_BN (recompute BN statistics over NUM_ITER training batches).
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detco_bench.tv_engine.settings import Settings

CHECKPOINT_FORMAT = "detco-bench.torchvision-transfer"
LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final.pth"
METRICS_FILE = "metrics.jsonl"
LOG_PERIOD = 20

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

#: Called after every training iteration with (completed iterations, loss dict); tests replace it
#: to interrupt a run.
after_step: Callable[[int, dict[str, float]], None] | None = None


# --------------------------------------------------------------------------------------------
# Solver


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
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_mult", 1.0)
    return base_lr * factor


# --------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Checkpointer:
    """Periodic and final checkpoints in `out` (rank 0 writes; every rank reads)."""

    def __init__(self, out: str | Path, rank: int = 0, world: int = 1, meta: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.rank = rank
        self.world = world
        self.meta = dict(meta or {})
        self._pending_rng: dict[str, Any] | None = None

    def last(self) -> Path | None:
        pointer = self.out / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        path = self.out / name
        return path if name and path.is_file() else None

    def save(
        self,
        name: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scaler: Any,
        iteration: int,
    ) -> Path | None:
        from detco_bench.tv_engine.evaluate import gather_to_main
        from pretrain.atomic import atomic_torch_save, atomic_write_text

        rngs = gather_to_main(_rng_state())
        if self.rank != 0:
            return None
        data = {
            "format": CHECKPOINT_FORMAT,
            "iteration": int(iteration),
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rngs,
            **self.meta,
        }
        path = self.out / name
        atomic_torch_save(path, data)
        atomic_write_text(self.out / LAST_CHECKPOINT, name)
        return path

    def load(
        self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scaler: Any
    ) -> int:
        """Restore the model, optimizer and scaler from `path`; returns the number of completed
        iterations. The RNG state is restored by `restore_rng`, called right before the first
        iteration (building the data loader's iterator draws from the global RNG)."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a torchvision-engine checkpoint (format {data.get('format')!r})")
        unwrap(model).load_state_dict(data["model"])
        if optimizer is not None and data.get("optimizer"):
            optimizer.load_state_dict(data["optimizer"])
        if scaler is not None and data.get("scaler"):
            scaler.load_state_dict(data["scaler"])
        rngs = data.get("rng") or []
        self._pending_rng = rngs[self.rank] if self.rank < len(rngs) else None
        return int(data["iteration"])

    def restore_rng(self) -> None:
        """Put back the RNG state saved with the checkpoint that `load` read (once)."""
        _set_rng_state(self._pending_rng)
        self._pending_rng = None


# --------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """metrics.jsonl + TensorBoard on rank 0 (no-ops elsewhere)."""

    def __init__(self, out: Path, rank: int, start_iter: int, tensorboard: bool = True) -> None:
        self.enabled = rank == 0
        self.path = out / METRICS_FILE
        self.tb: Any = None
        if not self.enabled:
            return
        if start_iter > 0 and self.path.is_file():
            # Drop what an interrupted attempt logged after its last checkpoint.
            from pretrain.atomic import atomic_write_text

            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= start_iter:
                        kept.append(line)
                except (ValueError, AttributeError):
                    continue
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        elif start_iter == 0 and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=start_iter if start_iter > 0 else None)
            except Exception:  # noqa: BLE001 - tensorboard missing or broken: jsonl still works
                self.tb = None

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self.enabled and self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _reduce(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    import torch.distributed as dist

    names = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float() for k in names])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return {k: float(v) for k, v in zip(names, values.tolist(), strict=True)}


# --------------------------------------------------------------------------------------------
# Loop


def _to_device(images: list[torch.Tensor], targets: list[Any], device: torch.device) -> tuple[list, list]:
    images = [i.to(device, non_blocking=True) for i in images]
    moved = []
    for t in targets:
        if isinstance(t, dict):
            moved.append({k: v.to(device, non_blocking=True) for k, v in t.items()})
        else:
            moved.append(t.to(device, non_blocking=True))
    return images, moved


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
) -> None:
    """Train from `start_iter` to SOLVER.MAX_ITER (exclusive end), checkpointing on the way."""
    max_iter = s.int("SOLVER.MAX_ITER")
    base_lr = s.float("SOLVER.BASE_LR")
    period = s.int("SOLVER.CHECKPOINT_PERIOD")
    model.train()
    t_last = time.perf_counter()
    for it in range(start_iter, max_iter):
        lr = set_lr(optimizer, base_lr, lr_factor(it, s))
        t0 = time.perf_counter()
        images, targets = next(batches)
        images, targets = _to_device(images, targets, device)
        data_time = time.perf_counter() - t0
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
        now = time.perf_counter()
        if done % LOG_PERIOD == 0 or done == max_iter or it == start_iter:
            log.write(done, {**values, "lr": lr, "time": now - t_last, "data_time": data_time})
            logger(
                f"iter {done}/{max_iter}  loss {values['total_loss']:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "total_loss")
                + f"  lr {lr:.6g}"
            )
        t_last = now
        if progress is not None:
            progress(done, values["total_loss"], lr)
        if period > 0 and done % period == 0 and done < max_iter:
            checkpointer.save(f"model_{it:07d}.pth", model, optimizer, scaler, done)
        if after_step is not None:
            after_step(done, values)


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterator[tuple[list, list]], num_iter: int, device: torch.device) -> int:
    """Recompute the running statistics of every BatchNorm as the plain average of the batch
    statistics over `num_iter` training batches (fvcore's update_bn_stats, which Detectron2's
    PreciseBN hook uses); averaged over processes afterwards. Returns the number of BN layers."""
    import torch.distributed as dist

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
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= dist.get_world_size()
    return len(bns)
