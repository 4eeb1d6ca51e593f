"""The ImageFolder input of a linear evaluation: layout check, the protocol's two transforms, and an
in-order index range sampler (resumable feature extraction)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Sampler
from torchvision.transforms import v2

from detco_bench.errors import UserError
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data import IMAGE_EXTENSIONS


def validate_imagefolder(root: str | os.PathLike) -> list[str]:
    """Check ROOT/{train,val}/<class>/<images>; return the class names. Says precisely what is wrong."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--data {root} is a file, not a folder (expected an ImageFolder root)")
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise UserError(f"{folder} is missing: expected an ImageFolder layout {root}/{{train,val}}/<class>/<image>")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not names:
            raise UserError(f"{folder} has no class sub-folders")
        empty = [n for n in names if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in (folder / n).rglob("*"))]
        if empty:
            raise UserError(f"{folder} has class folders without images: {', '.join(empty[:5])}"
                            + (" ..." if len(empty) > 5 else ""))
        classes[split] = names
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise UserError(f"train and val classes differ: only in train {only_train[:5]}, only in val {only_val[:5]}")
    if len(classes["train"]) < 2:
        raise UserError(f"{root}/train has a single class; a classifier needs at least two")
    return classes["train"]


def train_crop(size: int) -> v2.Compose:
    """The geometric part of the protocol's training augmentation: an image -> (3, size, size) uint8."""
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def val_crop(size: int) -> v2.Compose:
    """The protocol's validation view (resize to size * 256 / 224, centre crop): (3, size, size) uint8."""
    return v2.Compose([v2.ToImage(), v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)])


def normalize() -> v2.Compose:
    """uint8 images (..., 3, H, W) -> float32 in [0, 1] standardised by ImageNet's mean and std; the
    same arithmetic per element on one image or on a batch, so a batch gets the per-image bits."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def train_transform(size: int) -> v2.Compose:
    """The protocol's training augmentation: an image -> a normalised (3, size, size) float tensor."""
    return v2.Compose([train_crop(size), normalize()])


def val_transform(size: int) -> v2.Compose:
    """The protocol's validation view, normalised: (3, size, size) float."""
    return v2.Compose([val_crop(size), normalize()])


class IndexRange(Sampler[int]):
    """Indices [start, stop) of a dataset in order (resumable feature extraction)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
