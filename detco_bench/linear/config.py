"""`LinearConfig`: every setting of one linear-evaluation job, and `preset_config` (per-mode defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from detco_bench.errors import UserError
from pretrain.config import machine_workers

MODES = ("protocol", "fast", "knn", "stages")
FAST_HEADS = ("sgd", "lbfgs")
VIEW_SAMPLINGS = ("cycle", "gaussian")  # how the sgd head draws an image's feature each epoch
DEFAULT_AUG_COPIES = 4
"""Augmented views per training image that `fast` / `stages` cache unless told otherwise.

With the sgd head's default Gaussian view sampling, four views agreed with the protocol within a
point at both sizes of `benchmarks/linear_fast_vs_protocol.py` (24 seeds) at 23x less wall-clock
there, and cost (100 x 1.28M + 50k) / (4 x 1.28M + 50k) = 24.8x fewer backbone passes on ImageNet
(docs/linear.md)."""
LBFGS_WEIGHT_DECAYS = tuple(10.0 ** e for e in range(-6, 3))  # on standardised features


@dataclass
class LinearConfig:
    mode: str = "protocol"
    epochs: int = 100
    batch_size: int = 256  # global
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (60, 80)
    image_size: int = 224  # crop; validation resizes to image_size * 256 / 224 first
    workers: int = 8
    seed: int = 0
    # fast / stages: augmented views of each training image to cache; -1 picks the mode's default
    # (DEFAULT_AUG_COPIES for fast and stages, none otherwise).
    aug_copies: int = -1
    fast_head: str = "sgd"  # fast / stages: "sgd" (the protocol's head and schedule) or "lbfgs"
    # sgd head: "cycle" (epoch e trains on cached view e mod K) or "gaussian" (each epoch a fresh
    # draw from a Gaussian fitted to each image's K views; detco_bench.linear.fast); "" picks the
    # default: gaussian for the sgd head of fast / stages with 2 or more views, else cycle.
    view_sampling: str = ""
    lbfgs_weight_decays: tuple[float, ...] = LBFGS_WEIGHT_DECAYS  # the L2 sweep of the lbfgs head
    holdout_fraction: float = 0.2  # lbfgs: training images held out to choose the weight decay
    lbfgs_max_iter: int = 500
    cache_dtype: str = "float32"  # or float16
    knn_k: int = 20
    knn_temperature: float = 0.07

    def __post_init__(self) -> None:
        if self.aug_copies == -1:
            self.aug_copies = DEFAULT_AUG_COPIES if self.mode in ("fast", "stages") else 0
        if not self.view_sampling:
            drawn = self.mode in ("fast", "stages") and self.fast_head == "sgd" and self.aug_copies >= 2
            self.view_sampling = "gaussian" if drawn else "cycle"

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.fast_head not in FAST_HEADS:
            raise UserError(f"unknown --fast-head {self.fast_head!r}; choose one of {', '.join(FAST_HEADS)}")
        if self.view_sampling not in VIEW_SAMPLINGS:
            raise UserError(f"unknown --view-sampling {self.view_sampling!r}; "
                            f"choose one of {', '.join(VIEW_SAMPLINGS)}")
        if self.view_sampling == "gaussian" and (self.fast_head != "sgd" or self.aug_copies < 2):
            raise UserError("--view-sampling gaussian needs --fast-head sgd and --aug-copies 2 or more "
                            f"(got --fast-head {self.fast_head}, --aug-copies {self.aug_copies})")
        if self.cache_dtype not in ("float32", "float16"):
            raise UserError(f"--cache-dtype must be float32 or float16, got {self.cache_dtype!r}")
        for name in ("epochs", "batch_size", "image_size", "knn_k", "lbfgs_max_iter"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.aug_copies < 0:
            raise UserError(f"--aug-copies must be 0 or more, got {self.aug_copies}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise UserError(f"the held-out fraction must be in (0, 1), got {self.holdout_fraction}")
        if not self.lbfgs_weight_decays or min(self.lbfgs_weight_decays) < 0:
            raise UserError("the lbfgs weight-decay sweep needs at least one value, none negative")

    def train_copies(self) -> list[int]:
        """Which cached views of the training set this job uses: 0 is the centre crop (the
        validation transform), 1..aug_copies are passes of the protocol's training augmentation."""
        augmented = [] if self.mode == "knn" else list(range(1, self.aug_copies + 1))
        # The sgd head, like the protocol, never trains on centre crops once augmented views
        # exist; the lbfgs head scores its held-out images on centre crops, as validation does.
        center = [0] if not augmented or self.fast_head == "lbfgs" else []
        return center + augmented


def preset_config(mode: str, **overrides: Any) -> LinearConfig:
    """The mode's defaults with `overrides` (None values ignored). Without a `workers` override the
    default (8) is capped by what the machine has (`pretrain.config.machine_workers`: 8 loader
    processes on 2 cores only slow extraction down); an explicit value is kept."""
    # Built with the overrides, not replaced into a built default: the defaults that depend on other
    # settings (aug_copies on the mode, view_sampling on the head and views) see the final ones.
    cfg = LinearConfig(mode=mode, **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("workers") is None:
        cfg = replace(cfg, workers=min(cfg.workers, machine_workers()))
    if "milestones" not in overrides and cfg.epochs != 100:
        # Keep the protocol's shape (decay at 60% and 80% of training) for shorter schedules.
        cfg = replace(cfg, milestones=(math.ceil(cfg.epochs * 0.6), math.ceil(cfg.epochs * 0.8)))
    cfg.validate()
    return cfg


#: MoCo's linear classification protocol (the paper's linear numbers): these settings, mode
#: ``protocol``, on ImageNet-1k. The loader workers and the seed do not change what is measured,
#: nor does the number of GPUs (the backbone's BN is frozen; the batch is global).
PROTOCOL = LinearConfig()
PROTOCOL_DATASET, PROTOCOL_CLASSES = "imagenet", 1000
PROTOCOL_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "image_size")
APPROXIMATIONS = {
    "fast": "a head trained on cached features of a few augmented views, not on fresh augmentations each epoch",
    "knn": "a weighted kNN classifier on centre-crop features, not a trained linear head",
    "stages": "heads on cached features of every stage, not a res5 linear head on fresh augmentations",
}


def protocol_fidelity(cfg: LinearConfig, dataset: str, classes: int) -> dict[str, Any]:
    """``{"protocol": "exact"|"adapted", "differences": [...]}`` of a linear evaluation, the shape of
    a transfer record's (`detco_bench.transfer.protocol`): ``exact`` only for MoCo's recipe on
    ImageNet-1k; every difference is listed (the mode, each setting, the dataset)."""
    differences: list[str] = []
    if cfg.mode != PROTOCOL.mode:
        differences.append(f"mode: {cfg.mode} ({APPROXIMATIONS.get(cfg.mode, 'not the protocol')})")
    for key in PROTOCOL_KEYS:
        published, actual = getattr(PROTOCOL, key), getattr(cfg, key)
        if isinstance(actual, list):  # milestones given as a list
            actual = tuple(actual)
        if published != actual:
            differences.append(f"{key}: {published!r} -> {actual!r}")
    if dataset != PROTOCOL_DATASET or classes != PROTOCOL_CLASSES:
        differences.append(f"data: {dataset} ({classes} classes), not ImageNet-1k")
    return {"protocol": "adapted" if differences else "exact", "differences": differences}
