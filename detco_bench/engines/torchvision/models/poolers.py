"""Detectron2's ROIPooler (ROIAlignV2) on torchvision's roi_align."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align


def _rois(boxes: list[Tensor]) -> Tensor:
    concat = torch.cat(boxes, dim=0)
    ids = torch.cat(
        [torch.full((len(b), 1), i, dtype=concat.dtype, device=concat.device) for i, b in enumerate(boxes)], dim=0
    )
    return torch.cat([ids, concat], dim=1)


class D2RoIPooler(nn.Module):
    """Detectron2's ROIPooler with ROIAlignV2: RoIAlign with aligned=True (half-pixel offset) on
    feature maps of known strides; with several maps, a box of side s goes to level
    floor(4 + log2(s / 224 + 1e-8)) clamped to the available levels."""

    def __init__(
        self,
        featmap_names: list[str],
        strides: list[int],
        output_size: int,
        sampling_ratio: int = 0,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.scales = [1.0 / s for s in strides]
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = int(sampling_ratio)
        self.min_level = int(round(math.log2(strides[0])))
        self.max_level = int(round(math.log2(strides[-1])))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """x: feature maps [N, C, H_l, W_l] by name; boxes: per image [R_i, 4] XYXY in input pixels.
        Returns [sum R_i, C, output_size, output_size] pooled features, in the order of `boxes`."""
        feats = [x[n] for n in self.featmap_names]
        rois = _rois(boxes)
        if len(feats) == 1:
            return roi_align(
                feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio, aligned=True
            )
        sizes = torch.sqrt(torch.cat([box_ops.box_area(b) for b in boxes]))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_box_size + 1e-8))
        levels = (torch.clamp(levels, min=self.min_level, max=self.max_level) - self.min_level).to(torch.int64)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, aligned=True)
                out[idx] = pooled.to(out.dtype)
        return out
