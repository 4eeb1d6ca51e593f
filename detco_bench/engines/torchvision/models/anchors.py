"""Detectron2's anchors (DefaultAnchorGenerator) behind torchvision's AnchorGenerator interface.

torchvision's AnchorGenerator derives each level's stride from the padded image size
(``padded_size // feature_size``), rounds the base anchors to integers and orders them ratio-major;
Detectron2 uses the nominal stride of the feature map, exact float anchors, size-major order and
ANCHOR_GENERATOR.OFFSET. On an image side that is not a multiple of the stride the two disagree by
up to tens of pixels at the far edge, so the engine uses these anchors everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detco_bench.engines.torchvision.settings import Settings

#: Detectron2's default of MODEL.ANCHOR_GENERATOR.OFFSET (Base-Defaults.yaml does not spell it out).
DEFAULT_OFFSET = 0.0


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The anchors of one feature-map cell centred at (0, 0): float32 [len(sizes) * len(ratios), 4]
    XYXY, for each size (sqrt of the area) for each aspect ratio (height / width), not rounded."""
    rows = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / float(ratio))
            h = float(ratio) * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float64).to(torch.float32)


def grid_anchors(cell: Tensor, grid: tuple[int, int], stride: int, offset: float) -> Tensor:
    """`cell` [A, 4] shifted to every position of an [H, W] grid of nominal `stride`, the first centre
    at offset * stride: float32 [H * W * A, 4], position-major (row by row), then cell order."""
    h, w = grid
    device = cell.device
    # In float64 then rounded once, so a centre is exactly float32(offset * stride + i * stride).
    xs = (offset * stride + torch.arange(w, dtype=torch.float64, device=device) * stride).to(torch.float32)
    ys = (offset * stride + torch.arange(h, dtype=torch.float64, device=device) * stride).to(torch.float32)
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


class D2AnchorGenerator(AnchorGenerator):
    """Detectron2's DefaultAnchorGenerator for torchvision's RPN and RetinaNet.

    sizes / aspect_ratios: one sequence per feature level; strides: the nominal stride of each level
    (res4: 16; P2-P6: 4..64; P3-P7: 8..128). ``forward(image_list, feature_maps)`` returns, per image,
    float32 [sum_l H_l * W_l * A_l, 4] XYXY anchors in input-pixel coordinates (level by level), the
    same for every image of the batch; they never depend on the padded image size.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = DEFAULT_OFFSET,
    ) -> None:
        if not len(sizes) == len(aspect_ratios) == len(strides):
            raise ValueError(f"{len(sizes)} size levels, {len(aspect_ratios)} ratio levels, {len(strides)} strides")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios, strict=True)]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """feature_maps: per level [N, C, H_l, W_l]. Returns N copies of the batch's anchors."""
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor levels")
        device = feature_maps[0].device
        levels = [
            grid_anchors(cell.to(device), (int(f.shape[-2]), int(f.shape[-1])), stride, self.offset)
            for cell, f, stride in zip(self.cell_anchors, feature_maps, self.strides, strict=True)
        ]
        anchors = torch.cat(levels, dim=0)
        return [anchors for _ in range(len(image_list.image_sizes))]


def anchor_generator(s: Settings, strides: Sequence[int]) -> D2AnchorGenerator:
    """MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS / OFFSET for feature levels of nominal `strides`.
    A single entry (or a flat list) is broadcast to every level, as Detectron2 does."""
    levels = len(strides)
    sizes = _per_level(s.list("MODEL.ANCHOR_GENERATOR.SIZES"), levels, "SIZES")
    ratios = _per_level(s.list("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"), levels, "ASPECT_RATIOS")
    offset = float(s.get("MODEL.ANCHOR_GENERATOR.OFFSET", DEFAULT_OFFSET))
    return D2AnchorGenerator(sizes, ratios, strides, offset)


def _per_level(values: list, levels: int, name: str) -> list[list[float]]:
    if not values:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.{name} is empty")
    if not isinstance(values[0], (list, tuple)):
        return [[float(v) for v in values]] * levels
    per_level = [[float(v) for v in x] for x in values]
    if len(per_level) == 1:
        return per_level * levels
    if len(per_level) != levels:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.{name} has {len(per_level)} levels, the model has {levels}")
    return per_level
