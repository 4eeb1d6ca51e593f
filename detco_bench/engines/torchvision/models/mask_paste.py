"""Pasting predicted masks into the image as Detectron2's paste_masks_in_image does: each M x M mask
sampled bilinearly at the centres of the image pixels its box covers.

torchvision's paste_masks_in_image instead pads the mask by one pixel, resizes it to the box rounded
to integers and pastes it there (Detectron1's method), which moves mask borders by up to a pixel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """masks: [N, 1, M, M] probabilities; boxes: [N, 4] XYXY in the output image; size: (H, W).
    Returns float32 [N, 1, H, W] probabilities: inside each box's pixel range (widened by a pixel)
    the mask sampled at pixel centres (zero beyond the mask's edge), zero elsewhere."""
    h, w = size
    out = torch.zeros((len(masks), 1, h, w), dtype=torch.float32, device=masks.device)
    boxes = boxes.float()
    # Only the integer bounds leave the device; the sampling grid is computed in float32 where the masks are.
    for i, (x0, y0, x1, y1) in enumerate(boxes.detach().cpu().tolist()):
        if x1 <= x0 or y1 <= y0:
            continue
        c0, c1 = max(math.floor(x0) - 1, 0), min(math.ceil(x1) + 1, w)
        r0, r1 = max(math.floor(y0) - 1, 0), min(math.ceil(y1) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        bx0, by0, bx1, by1 = boxes[i]
        xs = (torch.arange(c0, c1, dtype=torch.float32, device=masks.device) + 0.5 - bx0) / (bx1 - bx0) * 2 - 1
        ys = (torch.arange(r0, r1, dtype=torch.float32, device=masks.device) + 0.5 - by0) / (by1 - by0) * 2 - 1
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=-1)
        sampled = F.grid_sample(masks[i : i + 1].float(), grid[None], mode="bilinear", align_corners=False)
        out[i, 0, r0:r1, c0:c1] = sampled[0, 0]
    return out
