"""INPUT.CROP for detection tasks: an instance's polygons and masks cut to the crop window as
Detectron2 0.6 cuts them (fvcore's ``CropTransform.apply_polygons``, which uses shapely).

Detectron2 turns each polygon into a shapely region (``buffer(0)``: a keyhole polygon, a ring
joined to its holes by zero-width slits as COCO and our synthetic sets write them, becomes a
region with holes), intersects it with the window and keeps the *outer boundary* of every piece
of positive area. So a hole that lies wholly inside the window is filled, a hole the window's
edge cuts becomes a notch, and a polygon the window splits becomes several polygons. This module
does the same without shapely: holes inside the window are dropped from the keyhole polygon, then
the polygon is clipped by the window's four half-planes, each clip splitting it into the pieces
on the inner side (`clip_half_plane`). The pieces' interiors are Detectron2's; where a kept hole
stays joined to its piece, the slit stays too (zero width: rasterisers cancel it, and it lies
inside the piece's bounding box).

Polygons here are float64 [V, 2] arrays of (x, y) vertices in continuous pixel coordinates.
"""

from __future__ import annotations

import numpy as np

from detco_bench.engines.torchvision.data.polygons import Polygons

#: A crop window (x0, y0, x1, y1) in the uncropped image's pixel coordinates.
Window = tuple[float, float, float, float]


def area2(ring: np.ndarray) -> float:
    """Twice the signed (shoelace) area of the ring `ring` float [V, 2]."""
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def drop_repeats(ring: np.ndarray) -> np.ndarray:
    """`ring` float [V, 2] without vertices equal to their predecessor (cyclically)."""
    if len(ring) < 2:
        return ring
    keep = np.any(ring != np.roll(ring, 1, axis=0), axis=1)
    return ring[keep] if keep.any() else ring[:1]


def split_slits(ring: np.ndarray) -> list[np.ndarray]:
    """The loops of a keyhole polygon: `ring` float [V, 2] cut at every zero-width slit (an edge
    a -> b that the ring later walks back, b -> a). A simple polygon is one loop, itself."""
    ring = drop_repeats(ring)
    n = len(ring)
    first: dict[tuple[float, float, float, float], int] = {}
    for k in range(n):
        a, b = ring[k], ring[(k + 1) % n]
        back = first.get((b[0], b[1], a[0], a[1]))
        if back is not None:
            # edge `back` is b -> a, edge k walks it back; between them the slit's inner loop
            rolled = np.roll(ring, -back, axis=0)  # edge 0: b -> a; edge m: a -> b
            m = (k - back) % n
            inner, outer = rolled[1:m], rolled[m + 1 :]
            return [loop for part in (inner, outer) if len(part) >= 3 for loop in split_slits(part)]
        first.setdefault((a[0], a[1], b[0], b[1]), k)
    return [ring]


def _inside_window(loop: np.ndarray, window: Window) -> bool:
    """Whether the loop float [V, 2] lies in the closed window touching its edges at points only
    (its region then stays a hole of the cropped piece, which Detectron2 fills)."""
    x0, y0, x1, y1 = window
    x, y = loop[:, 0], loop[:, 1]
    if x.min() < x0 or y.min() < y0 or x.max() > x1 or y.max() > y1:
        return False
    for coord, bounds in ((x, (x0, x1)), (y, (y0, y1))):
        for bound in bounds:
            on = coord == bound
            if np.any(on & np.roll(on, -1)):  # an edge along the window's edge: the hole opens
                return False
    return True


def _point_in_loop(point: np.ndarray, loop: np.ndarray) -> bool:
    """Even-odd test of `point` (x, y) against the loop float [V, 2]."""
    x, y = float(point[0]), float(point[1])
    xa, ya = loop[:, 0], loop[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    crosses = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = xa + (y - ya) * (xb - xa) / (yb - ya)
    return bool(np.count_nonzero(crosses & (xi > x)) % 2)


def _join(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`hole` joined into `ring` by a zero-width slit between their closest vertices."""
    d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return np.concatenate([ring[: i + 1], hole[j:], hole[: j + 1], ring[i:]])


def fill_enclosed_holes(ring: np.ndarray, window: Window) -> list[np.ndarray]:
    """`ring` float [V, 2] as the rings to clip: its holes that the cropped piece would enclose
    dropped (Detectron2 keeps only each piece's outer boundary), the others kept joined to their
    outer loop; a ring whose slits join several outer loops becomes one ring per outer loop."""
    loops = [loop for loop in split_slits(ring) if area2(loop) != 0]
    if len(loops) <= 1:
        return loops
    sign = np.sign(area2(max(loops, key=lambda lp: abs(area2(lp)))))
    outers = [lp for lp in loops if np.sign(area2(lp)) == sign]
    holes = [lp for lp in loops if np.sign(area2(lp)) != sign]
    if len(outers) == 1 and not any(_inside_window(h, window) for h in holes):
        return [ring]  # nothing to fill: the polygon as written
    out = []
    for outer in outers:
        kept = outer
        for hole in holes:
            owners = [o for o in outers if _point_in_loop(hole.mean(axis=0), o)]
            smallest = min(owners, key=lambda o: abs(area2(o)), default=None)
            if smallest is outer and not _inside_window(hole, window):
                kept = _join(kept, hole)
        out.append(kept)
    return out


def _crossing(p: np.ndarray, q: np.ndarray, dp: float, dq: float, axis: int, bound: float) -> np.ndarray:
    """Where the edge p -> q (signed distances `dp`, `dq` to the line, one of them > 0 and the
    other <= 0) meets the line ``coordinate[axis] == bound``."""
    if dp == 0:
        return p.copy()
    if dq == 0:
        return q.copy()
    point = np.empty(2, dtype=np.float64)
    other = 1 - axis
    point[axis] = bound
    point[other] = p[other] + (q[other] - p[other]) * (bound - p[axis]) / (q[axis] - p[axis])
    return point


def clip_half_plane(ring: np.ndarray, axis: int, bound: float, side: int) -> list[np.ndarray]:
    """The pieces of the polygon `ring` float [V, 2] where ``side * (coordinate[axis] - bound) > 0``.

    The ring is cut into chains of inner vertices, each from the point where it enters the half
    plane to where it leaves; the pieces are these chains joined along the line. Walking the
    boundary of a piece, the line is run from an exit to the next entry in one direction (the
    piece's interior on the inner side, given the ring's orientation); in that direction along
    the line, crossings alternate exit, entry, exit, ... A vertex on the line counts as outside,
    as though the line were moved into the half plane by an infinitesimal: crossings at the same
    point are ordered where the moved line would meet them, and a slit's two crossings (the same
    edge walked both ways) entry first, as its points are inside the region.
    """
    d = side * (ring[:, axis] - bound)
    inside = d > 0
    if inside.all():
        return [ring]
    orientation = np.sign(area2(ring))
    if not inside.any() or orientation == 0:
        return []
    start = int(np.argmin(inside))  # an outside vertex: chains do not wrap around the array's end
    ring, d, inside = np.roll(ring, -start, axis=0), np.roll(d, -start), np.roll(inside, -start)
    step = side * orientation * (1 if axis == 1 else -1)
    other = 1 - axis
    chains: list[list[np.ndarray]] = []
    crossings: list[tuple[float, float, int, int]] = []  # (position, tie-break, exit 1 / entry 0, chain)
    current: list[np.ndarray] = []
    n = len(ring)
    for i in range(n):
        j = (i + 1) % n
        if inside[i]:
            current.append(ring[i])
        if inside[i] == inside[j]:
            continue
        point = _crossing(ring[i], ring[j], float(d[i]), float(d[j]), axis, bound)
        slope = (ring[j, other] - ring[i, other]) / (d[j] - d[i])
        key = (step * float(point[other]), step * float(slope))
        if inside[j]:
            current = [point]
            crossings.append((*key, 0, len(chains)))
        else:
            current.append(point)
            crossings.append((*key, 1, len(chains)))
            chains.append(current)
    crossings.sort()
    kinds = [c[2] for c in crossings]
    if kinds != [1, 0] * (len(chains)):
        # not a simple polygon (self-intersecting): the chains in ring order, as one polygon
        return [np.concatenate([np.asarray(c) for c in chains])]
    successor = {crossings[k][3]: crossings[k + 1][3] for k in range(0, len(crossings), 2)}
    pieces, seen = [], set()
    for first in range(len(chains)):
        if first in seen:
            continue
        parts, c = [], first
        while c not in seen:
            seen.add(c)
            parts.append(np.asarray(chains[c]))
            c = successor[c]
        piece = drop_repeats(np.concatenate(parts))
        if len(piece) >= 3 and area2(piece) != 0:
            pieces.append(piece)
    return pieces


def crop_polygons(polygons: Polygons, window: Window) -> Polygons:
    """An instance's polygons (flat [x0, y0, x1, y1, ...] arrays, uncropped image coordinates) cut
    to `window` and moved to the crop's coordinates: float64 flat arrays, as Detectron2's crop
    leaves them (none when the window misses the instance; several where it splits a polygon)."""
    x0, y0, x1, y1 = window
    out: Polygons = []
    for p in polygons:
        ring = drop_repeats(np.asarray(p, dtype=np.float64).reshape(-1, 2))
        if len(ring) < 3:
            continue
        pieces = fill_enclosed_holes(ring, window)
        for axis, bound, side in ((0, x0, 1), (0, x1, -1), (1, y0, 1), (1, y1, -1)):
            pieces = [q for piece in pieces for q in clip_half_plane(piece, axis, bound, side)]
        for piece in pieces:
            out.append((piece - np.array([x0, y0], dtype=np.float64)).reshape(-1))
    return out


def crop_box(boxes: np.ndarray, window: Window) -> np.ndarray:
    """Boxes float [N, 4] XYXY moved to the crop `window` and clipped to it."""
    x0, y0, x1, y1 = window
    out = boxes - np.array([x0, y0, x0, y0], dtype=boxes.dtype)
    out[:, 0::2] = out[:, 0::2].clip(0, x1 - x0)
    out[:, 1::2] = out[:, 1::2].clip(0, y1 - y0)
    return out


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """float32 [N, 4] XYXY: the pixel extent of each mask uint8 [N, H, W] (x1, y1 one past the
    last pixel); all zero for an empty mask (Detectron2's ``BitMasks.get_bounding_boxes``)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        xs, ys = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
        if len(xs) and len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def polygon_box(polygons: Polygons) -> np.ndarray:
    """float32 [4] XYXY: the extent of an instance's polygons, as Detectron2's
    ``PolygonMasks.get_bounding_boxes`` computes it (float32 coordinates; its maximum starts at
    0, its minimum at infinity, so an instance without polygons gets an empty box)."""
    low = np.full(2, np.inf, dtype=np.float32)
    high = np.zeros(2, dtype=np.float32)
    for p in polygons:
        xy = p.reshape(-1, 2).astype(np.float32)
        low, high = np.minimum(low, xy.min(axis=0)), np.maximum(high, xy.max(axis=0))
    return np.concatenate([low, high])
