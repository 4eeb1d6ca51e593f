"""Instance polygons: moved with the image's resize and flip, and packed into tensors so that they
travel in a target dict to the model, which rasterises them per RoI (Detectron2's PolygonMasks).

An instance's polygons are a list of flat float64 arrays ``[x0, y0, x1, y1, ...]`` in continuous
pixel coordinates (COCO's convention). Packed (`pack_polygons`), the instances of one image are
``polygon_xy`` float64 [V, 2] (every vertex), ``polygon_sizes`` int64 [P] (vertices of each
polygon) and ``polygon_owner`` int64 [P] (the instance each polygon belongs to); instances without
polygons (RLE masks) own none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: One instance: its polygons, flat float64 [2 * vertices] arrays.
Polygons = list[np.ndarray]

PACKED_KEYS = ("polygon_xy", "polygon_sizes", "polygon_owner")


def as_polygons(segmentation: Sequence[Sequence[float]]) -> Polygons:
    """A COCO polygon list -> arrays: int64 where a polygon's coordinates are all integers in the
    file (Cityscapes', the synthetic sets'), else float64, as numpy reads them for Detectron2."""
    out = []
    for p in segmentation:
        a = np.asarray(p).reshape(-1)
        out.append(a if a.dtype.kind in "iu" else a.astype(np.float64))
    return out


def transform_polygons(
    polygons: Polygons, scale: tuple[float, float], flip: str | None, size: tuple[int, int]
) -> Polygons:
    """Resize by `scale` (sx, sy), then flip ("horizontal": x -> W - x, "vertical": y -> H - y, None)
    within the output image `size` (H, W), as Detectron2 moves polygon coordinates; float64 out.

    Detectron2's transforms update the coordinate array in place, so integer coordinates (see
    `as_polygons`) stay integers: a resize truncates them (towards zero). Real COCO polygons are
    floats and move exactly; Cityscapes' are integers, and so, then, are Detectron2's."""
    out = []
    for p in polygons:
        q = p.copy()
        q[0::2] = q[0::2] * scale[0]  # assigned into an integer array: truncated, as in Detectron2
        q[1::2] = q[1::2] * scale[1]
        if flip == "horizontal":
            q[0::2] = size[1] - q[0::2]
        elif flip == "vertical":
            q[1::2] = size[0] - q[1::2]
        out.append(q.astype(np.float64))
    return out


def pack_polygons(instances: Sequence[Polygons | None]) -> dict[str, Tensor]:
    """The polygons of an image's instances (None: an instance without polygons) as three tensors."""
    coords: list[np.ndarray] = []
    sizes: list[int] = []
    owners: list[int] = []
    for i, polygons in enumerate(instances):
        for p in polygons or []:
            coords.append(p.reshape(-1, 2))
            sizes.append(len(p) // 2)
            owners.append(i)
    xy = np.concatenate(coords) if coords else np.zeros((0, 2), np.float64)
    return {
        "polygon_xy": torch.from_numpy(np.ascontiguousarray(xy, dtype=np.float64)),
        "polygon_sizes": torch.tensor(sizes, dtype=torch.int64),
        "polygon_owner": torch.tensor(owners, dtype=torch.int64),
    }


def unpack_polygons(packed: dict[str, Tensor], num_instances: int) -> list[Polygons | None]:
    """`pack_polygons` undone (on the CPU): per instance its polygons, or None when it has none."""
    xy = packed["polygon_xy"].detach().cpu().to(torch.float64).numpy()
    sizes = packed["polygon_sizes"].detach().cpu().tolist()
    owners = packed["polygon_owner"].detach().cpu().tolist()
    out: list[Polygons | None] = [None] * num_instances
    start = 0
    for n, owner in zip(sizes, owners, strict=True):
        polygons = out[owner]
        if polygons is None:
            polygons = out[owner] = []
        polygons.append(xy[start : start + n].reshape(-1).copy())
        start += n
    return out
