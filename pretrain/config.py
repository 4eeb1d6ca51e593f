"""Pretraining configuration: one dataclass, three named presets."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pretrain.errors import PretrainInputError

ARCHS = ("resnet18", "resnet50")


@dataclass
class PretrainConfig:
    # Method switches (the paper's ablation axes); MoCo v2 is DetCo with both off.
    arch: str = "resnet50"
    multi_level: bool = True  # contrast at res2..res5 (else res5 only)
    local_contrast: bool = True  # local patch set: L_l<->l and L_g<->l (else L_g<->g only)
    stage_weights: tuple[float, ...] = (0.1, 0.4, 0.7, 1.0)  # res2..res5
    dim: int = 128
    queue_size: int = 65536
    key_momentum: float = 0.999
    temperature: float = 0.2
    # Optimisation (lr = base_lr * batch_size / 256).
    epochs: int = 200
    batch_size: int = 256  # global, over all processes
    base_lr: float = 0.03
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    # Augmentation.
    image_size: int = 224
    randaugment: bool = True
    autoaugment: bool = False  # the paper's "DetCo+AA" variant
    local_resize: int = 255  # crop -> resize to this square, cut into 3x3 cells
    patch_size: int = 64  # random crop per cell
    # Data.
    data: str = "synthetic"  # a folder of images (searched recursively) or "synthetic"
    synthetic_images: int = 1024
    synthetic_size: int = 256
    workers: int = 4  # per process; presets are capped to the machine (see `machine_workers`)
    # BN groups per process (split-BN, see pretrain.split_bn). None: automatic, 8 on one process
    # (fewer when the batch is too small), 1 under DDP, where shuffle-BN across processes applies.
    # train() records the value it used.
    bn_splits: int | None = None
    # Runtime.
    seed: int = 0
    amp: bool = False  # bf16 autocast where supported, else fp16 with loss scaling
    channels_last: bool = False
    log_every: int = 10
    save_every_steps: int = 0  # 0: checkpoint at epoch ends only
    max_steps: int = 0  # 0: no limit; >0 stops the run early (smoke tests, benchmarks)

    @property
    def method(self) -> str:
        """"mocov2" when both DetCo axes are off, else "detco" (or "detco_aa" with AutoAugment)."""
        if not self.multi_level and not self.local_contrast:
            return "mocov2"
        return "detco_aa" if self.autoaugment else "detco"

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise PretrainInputError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.multi_level and len(self.stage_weights) != 4:
            raise PretrainInputError(f"stage_weights needs 4 values (res2..res5), got {self.stage_weights}")
        for name in ("epochs", "batch_size", "queue_size", "dim", "image_size"):
            if getattr(self, name) <= 0:
                raise PretrainInputError(f"{name} must be positive, got {getattr(self, name)}")
        # Named by their command-line flags (--base-lr ...), which set most of them.
        for name in ("base_lr", "temperature", "synthetic_images", "synthetic_size", "patch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise PretrainInputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("workers", "max_steps", "save_every_steps", "weight_decay", "sgd_momentum"):
            if getattr(self, name) < 0:
                raise PretrainInputError(
                    f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.key_momentum <= 1:
            raise PretrainInputError(f"key_momentum must be in [0, 1], got {self.key_momentum}")
        if self.bn_splits is not None and self.bn_splits < 1:
            raise PretrainInputError(f"--bn-splits must be at least 1, got {self.bn_splits}")
        if self.queue_size % self.batch_size:
            raise PretrainInputError(
                f"queue size {self.queue_size} is not a multiple of the global batch size "
                f"{self.batch_size}; the queue is filled one whole batch at a time")
        if self.local_resize % 3 or self.local_resize // 3 < self.patch_size:
            raise PretrainInputError(
                f"local_resize {self.local_resize} must split into 3 cells of at least "
                f"patch_size {self.patch_size} pixels")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stage_weights"] = list(self.stage_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PretrainInputError(f"unknown config keys: {', '.join(unknown)}")
        d = dict(d)
        if "stage_weights" in d:
            d["stage_weights"] = tuple(float(w) for w in d["stage_weights"])
        return cls(**d)


def _mocov2(**kw: Any) -> PretrainConfig:
    return PretrainConfig(multi_level=False, local_contrast=False, randaugment=False, **kw)


PRESETS: dict[str, PretrainConfig] = {
    # The paper's recipe (8 GPUs, batch 256).
    "detco_r50_200ep": PretrainConfig(),
    "detco_aa_r50_200ep": PretrainConfig(autoaugment=True),
    "mocov2_r50_200ep": _mocov2(),
    # Finishes in a couple of minutes on 2 CPU cores: tiny images, ResNet-18, short queue.
    "smoke": PretrainConfig(
        arch="resnet18", epochs=2, batch_size=16, queue_size=256, image_size=96, local_resize=144,
        patch_size=40, synthetic_images=64, synthetic_size=128, workers=2, log_every=1),
}


def machine_workers() -> int:
    """Data-loading workers that fit this machine: the CPUs this process may use, shared among the
    processes torchrun starts on the node (LOCAL_WORLD_SIZE), minus one for the training process."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(per_process - 1, 0)


def preset(name: str, **overrides: Any) -> PretrainConfig:
    """A copy of preset `name` with `overrides` (None values are ignored) applied and validated.

    Without a `workers` override the preset's worker count is capped by `machine_workers()` (a
    preset's 4 workers on a 2-core machine only slow the run down); an explicit value is kept."""
    if name not in PRESETS:
        raise PretrainInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PretrainInputError(f"unknown config keys: {', '.join(unknown)}")
    cfg = dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("workers") is None:
        cfg.workers = min(cfg.workers, machine_workers())
    cfg.validate()
    return cfg
