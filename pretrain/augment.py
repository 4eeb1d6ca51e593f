"""The two view pipelines of DetCo, on torchvision.transforms.v2.

- Global view: the MoCo v2 recipe (RandomResizedCrop scale 0.2-1, colour jitter 0.4/0.4/0.4/0.1
  with p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2 with p=0.5, flip), plus RandAugment
  (DetCo) and AutoAugment (the "AA" variant) when enabled.
- Local patch set (PIRL-style jigsaw): a crop covering >= 60% of the image, resized to a square
  (255 px in the paper), flip / jitter / blur, cut into a 3x3 grid of cells (85 px), the cells
  shuffled, one random patch (64 px) cropped from each cell.

All randomness comes from torch's global generator, so a caller that seeds it per sample gets
reproducible views (the training loop does, for exact resume).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _blur_kernel(size: int) -> int:
    """An odd kernel about 10% of the crop side, as MoCo v2's PIL blur effectively covers."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


def _photometric(size: int) -> list[v2.Transform]:
    return [
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=0.5),
        v2.RandomHorizontalFlip(),
    ]


_to_float_normalized = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def global_view_transform(size: int = 224, randaugment: bool = True, autoaugment: bool = False) -> v2.Compose:
    """uint8 image tensor (3, H, W) -> normalized float view (3, size, size)."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True)]
    if autoaugment:
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    if randaugment:
        steps.append(v2.RandAugment())
    steps += _photometric(size)
    return v2.Compose(steps + _to_float_normalized)


class JigsawPatches(torch.nn.Module):
    """uint8 image tensor (3, H, W) -> 9 normalized patches (9, 3, patch, patch), cells shuffled."""

    def __init__(self, resize: int = 255, patch: int = 64) -> None:
        super().__init__()
        if resize % 3 or resize // 3 < patch:
            raise ValueError(f"resize {resize} must split into 3 cells of at least {patch} px")
        self.cell = resize // 3
        self.patch = patch
        self.prepare = v2.Compose(
            [v2.RandomResizedCrop(resize, scale=(0.6, 1.0), antialias=True), *_photometric(resize),
             *_to_float_normalized])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grid = self.prepare(image)  # (3, resize, resize)
        c, p = self.cell, self.patch
        order = torch.randperm(9)
        offsets = torch.randint(0, c - p + 1, (9, 2))
        patches = []
        for slot in range(9):
            row, col = divmod(int(order[slot]), 3)
            dy, dx = int(offsets[slot, 0]), int(offsets[slot, 1])
            y, x = row * c + dy, col * c + dx
            patches.append(grid[:, y:y + p, x:x + p])
        return torch.stack(patches)
