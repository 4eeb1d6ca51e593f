"""Images and their pixel-level targets: reading, mask decoding and resizing, Detectron2's resize rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageOps
from torch import Tensor


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge output size: the short side becomes `short` unless the long
    side would exceed `max_size`; sizes rounded to the nearest integer."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def read_image(path: str, fmt: str = "RGB") -> Tensor:
    """uint8 [3, H, W] in `fmt` ("RGB" or "BGR"), EXIF orientation applied (as Detectron2 reads)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        array = np.asarray(im, dtype=np.uint8).copy()
    t = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if fmt == "BGR":
        t = t.flip(0)
    elif fmt != "RGB":
        raise ValueError(f"INPUT.FORMAT {fmt!r}: the torchvision engine reads RGB or BGR")
    return t


def annotation_mask(segm: Any, h: int, w: int) -> np.ndarray:
    """A COCO polygon list or RLE (compressed or not) -> uint8 [H, W]."""
    if isinstance(segm, list):
        rles = mask_util.frPyObjects(segm, h, w)
        rle = mask_util.merge(rles)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, h, w)
    else:
        rle = dict(segm)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] -> uint8 `size` (H', W'), PIL's nearest-neighbour resize (what Detectron2 applies to
    bitmasks; torch's "nearest" samples half a pixel off)."""
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), resample=Image.NEAREST), dtype=np.uint8)
