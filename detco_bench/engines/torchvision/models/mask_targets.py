"""Detectron2's mask-head targets and loss (mask_rcnn_loss): per foreground RoI, its GT mask cropped
to the proposal box at the head's M x M resolution, binary.

* An instance with polygons (INPUT.MASK_FORMAT "polygon"): the polygons are moved into the box
  (shifted by its corner, scaled by M / max(side, 0.1) per axis) and rasterised at M x M with
  pycocotools, as Detectron2's PolygonMasks.crop_and_resize does.
* Otherwise (RLE masks, MASK_FORMAT "bitmask"): the full-image bitmask is RoIAligned to M x M with
  aligned=True (sampling ratio 0) and thresholded at >= 0.5, as BitMasks.crop_and_resize does.

torchvision's maskrcnn_loss instead RoIAligns the bitmask with aligned=False into soft targets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import roi_align

from detco_bench.engines.torchvision.data.images import annotation_mask
from detco_bench.engines.torchvision.data.polygons import PACKED_KEYS, Polygons, unpack_polygons


def polygon_mask_in_box(polygons: Polygons, box: np.ndarray, size: int) -> np.ndarray:
    """bool [size, size]: `polygons` (image coordinates) rasterised inside `box` (float32 [4] XYXY)."""
    x0, y0, x1, y1 = box
    # The box is float32, as Detectron2 reads proposal boxes, so the scale factors are rounded alike.
    sx = size / max(x1 - x0, 0.1)
    sy = size / max(y1 - y0, 0.1)
    moved = []
    for p in polygons:
        q = p.astype(np.float64, copy=True)
        q[0::2] = (q[0::2] - x0) * sx
        q[1::2] = (q[1::2] - y0) * sy
        moved.append(q)
    if not moved:
        return np.zeros((size, size), dtype=bool)
    return annotation_mask(moved, size, size).astype(bool)


def bitmask_in_boxes(masks: Tensor, gt_index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """masks: uint8 [G, H, W] full-image GT masks; gt_index: [R] the GT of each RoI; boxes: [R, 4]
    XYXY. Returns bool [R, size, size]: aligned RoIAlign of each RoI's own GT mask, >= 0.5."""
    if boxes.numel() == 0:
        return torch.zeros((0, size, size), dtype=torch.bool, device=boxes.device)
    # The GT index as the RoI's batch index: each RoI samples only its own mask, without an [R, H, W] copy.
    rois = torch.cat([gt_index.to(boxes.dtype)[:, None], boxes], dim=1).float()
    crops = roi_align(masks[:, None].float(), rois, (size, size), 1.0, 0, aligned=True)
    return crops[:, 0] >= 0.5


def mask_targets(target: dict[str, Tensor], gt_index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """bool [R, size, size]: the targets of one image's R foreground RoIs (`boxes` [R, 4], matched to
    GT instances `gt_index` [R]) from its target dict (``masks`` [G, H, W], packed polygons)."""
    out = torch.zeros((len(boxes), size, size), dtype=torch.bool, device=boxes.device)
    if len(boxes) == 0:
        return out
    polygons: list[Polygons | None] = [None] * len(target["masks"])
    if all(k in target for k in PACKED_KEYS):
        polygons = unpack_polygons(target, len(target["masks"]))
    owners = gt_index.tolist()
    with_polygons = [i for i, g in enumerate(owners) if polygons[g] is not None]
    if with_polygons:
        cpu_boxes = boxes.detach().float().cpu().numpy()
        rasters = np.stack([polygon_mask_in_box(polygons[owners[i]], cpu_boxes[i], size) for i in with_polygons])
        out[torch.tensor(with_polygons, device=boxes.device)] = torch.from_numpy(rasters).to(boxes.device)
    rest = [i for i, g in enumerate(owners) if polygons[g] is None]
    if rest:
        idx = torch.tensor(rest, device=boxes.device)
        out[idx] = bitmask_in_boxes(target["masks"], gt_index[idx], boxes[idx].detach(), size)
    return out


def mask_loss(
    mask_logits: Tensor, proposals: list[Tensor], targets: list[dict[str, Tensor]], matched: list[Tensor]
) -> Tensor:
    """mask_logits: [R, K + 1, M, M] for the foreground RoIs of every image in order; proposals:
    per image [R_i, 4]; targets: per image ``labels`` [G_i] and the masks; matched: per image [R_i]
    GT indices. Binary cross-entropy with logits on each RoI's GT-class channel, mean over
    every pixel of every RoI (0 without RoIs)."""
    size = int(mask_logits.shape[-1])
    labels = [t["labels"][m] for t, m in zip(targets, matched, strict=True)]
    gt = [mask_targets(t, m, p, size) for t, m, p in zip(targets, matched, proposals, strict=True)]
    if sum(len(g) for g in gt) == 0:
        return mask_logits.sum() * 0
    label = torch.cat(labels)
    logits = mask_logits[torch.arange(len(label), device=label.device), label]
    return F.binary_cross_entropy_with_logits(logits, torch.cat(gt).to(logits.dtype), reduction="mean")
