"""Polygons from masks: exact COCO polygons (`mask_to_polygons`) and cityscapesScripts-style
polygons (`mask_to_cityscapes_polygon`), both traced along the crack boundary of a mask."""

from __future__ import annotations

from typing import Any

import numpy as np

Loop = list[tuple[int, int]]


def _boundary_loops(mask: np.ndarray) -> list[Loop]:
    """Closed crack-boundary loops of a boolean mask, vertices on pixel corners (x, y).

    Pixel (row r, col c) is the unit square [c, c+1] x [r, r+1]. Loops keep the mask on their right
    (y pointing down): outer boundaries run clockwise on screen (positive `_area2`), holes the other
    way. Where two mask pixels touch only diagonally, the loop turns right, so each outer loop
    encloses one 4-connected component. Collinear vertices are removed.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inside = m[1:-1, 1:-1]
    starts: list[tuple[int, int]] = []
    ends: list[tuple[int, int]] = []
    # (selected pixels, start corner offset, end corner offset) for top, right, bottom, left edges
    for sel, (ax, ay), (bx, by) in (
        (inside & ~m[:-2, 1:-1], (0, 0), (1, 0)),
        (inside & ~m[1:-1, 2:], (1, 0), (1, 1)),
        (inside & ~m[2:, 1:-1], (1, 1), (0, 1)),
        (inside & ~m[1:-1, :-2], (0, 1), (0, 0)),
    ):
        ys, xs = np.nonzero(sel)
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
            starts.append((x + ax, y + ay))
            ends.append((x + bx, y + by))
    outgoing: dict[tuple[int, int], list[int]] = {}
    for e, s in enumerate(starts):
        outgoing.setdefault(s, []).append(e)

    def successor(e: int) -> int:
        cands = outgoing[ends[e]]
        if len(cands) == 1:
            return cands[0]
        (sx, sy), (ex, ey) = starts[e], ends[e]
        dx, dy = ex - sx, ey - sy
        want = (ex - dy, ey + dx)  # the corner one step to the right of the heading (y down)
        for c in cands:
            if ends[c] == want:
                return c
        return cands[0]

    used = [False] * len(starts)
    loops: list[Loop] = []
    for first in sorted(range(len(starts)), key=lambda e: (starts[e][1], starts[e][0], e)):
        if used[first]:
            continue
        loop: Loop = []
        e = first
        while not used[e]:
            used[e] = True
            loop.append(starts[e])
            e = successor(e)
        loops.append(_drop_collinear(loop))
    return loops


def _drop_collinear(loop: Loop) -> Loop:
    n = len(loop)
    keep = []
    for i in range(n):
        (px, py), (cx, cy), (qx, qy) = loop[i - 1], loop[i], loop[(i + 1) % n]
        if (cx - px) * (qy - cy) - (cy - py) * (qx - cx) != 0:
            keep.append(loop[i])
    return keep


def _area2(loop: list[tuple[float, float]]) -> float:
    """Twice the signed (shoelace) area; positive for outer loops of `_boundary_loops`."""
    xs = np.array([p[0] for p in loop], dtype=np.float64)
    ys = np.array([p[1] for p in loop], dtype=np.float64)
    return float(np.sum(xs * np.roll(ys, -1) - np.roll(xs, -1) * ys))


def _point_in_loop(x: float, y: float, loop: Loop) -> bool:
    """Even-odd ray test; `x`, `y` must not be integers (so no ray passes through a vertex)."""
    pts = np.asarray(loop, dtype=np.float64)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (xi > x)) % 2)


def _keyhole(poly: list[Any], loop: list[Any]) -> list[Any]:
    """Join `loop` into `poly` through a zero-width slit between their two closest vertices.

    The slit is traversed once each way, so even-odd rasterizers (pycocotools, PIL) cancel it.
    """
    a = np.asarray(poly, dtype=np.float64)
    b = np.asarray(loop, dtype=np.float64)
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return poly[: i + 1] + loop[j:] + loop[: j + 1] + poly[i:]


def _group_loops(loops: list[Loop]) -> list[tuple[Loop, list[Loop]]]:
    """Pair each outer loop with the hole loops it directly encloses."""
    outers = [lp for lp in loops if _area2(lp) > 0]
    holes = [lp for lp in loops if _area2(lp) < 0]
    groups: list[tuple[Loop, list[Loop]]] = [(o, []) for o in outers]
    areas = [_area2(o) for o in outers]
    for hole in holes:
        # A point just on the mask side of the hole's first edge lies in the mask pixel that the
        # hole borders, so the enclosing outer loop is the smallest one containing it.
        (x0, y0), (x1, y1) = hole[0], hole[1]
        dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
        px = x0 + 0.5 * (x1 - x0) / max(abs(x1 - x0), abs(y1 - y0)) - 0.25 * dy
        py = y0 + 0.5 * (y1 - y0) / max(abs(x1 - x0), abs(y1 - y0)) + 0.25 * dx
        owners = [k for k, o in enumerate(outers) if _point_in_loop(px, py, o)]
        if owners:
            groups[min(owners, key=lambda k: areas[k])][1].append(hole)
    return groups


def mask_to_polygons(mask: np.ndarray) -> list[list[int]]:
    """COCO polygons (flat ``[x0, y0, x1, y1, ...]``) whose even-odd fill is exactly `mask`.

    One polygon per 4-connected component, in pixel-edge coordinates (pixel column c spans
    [c, c+1], as Detectron2 assumes for COCO polygons). Holes are joined to their component with a
    zero-width slit, so ``pycocotools.mask.frPyObjects`` + ``merge`` reproduces the mask exactly.
    """
    polygons = []
    for outer, holes in _group_loops(_boundary_loops(mask)):
        poly: list[Any] = list(outer)
        for hole in sorted(holes, key=_area2):
            poly = _keyhole(poly, list(hole))
        polygons.append([int(v) for p in poly for v in p])
    return polygons


def _inset_to_pixel_centres(loop: Loop) -> list[tuple[int, int]]:
    """Move each edge half a pixel into the mask and express it in pixel indices.

    The result runs through the centres of the boundary pixels, the convention of cityscapesScripts
    polygons, which PIL fills including the outline.
    """
    n = len(loop)
    out = []
    for i in range(n):
        (px, py), (cx, cy), (qx, qy) = loop[i - 1], loop[i], loop[(i + 1) % n]
        s1x, s1y = np.sign(cx - px), np.sign(cy - py)
        s2x, s2y = np.sign(qx - cx), np.sign(qy - cy)
        # right-hand normal of heading (dx, dy) with y down is (-dy, dx)
        ox = 0.5 * (-s1y - s2y)
        oy = 0.5 * (s1x + s2x)
        out.append((int(round(cx + ox - 0.5)), int(round(cy + oy - 0.5))))
    return out


def mask_to_cityscapes_polygon(mask: np.ndarray) -> list[list[int]]:
    """One cityscapesScripts polygon ``[[x, y], ...]`` (pixel indices) covering `mask`.

    All components and holes are joined by zero-width slits so one polygon describes one
    instance; PIL's even-odd fill (as in cityscapesScripts' json2labelImg) restores the mask up to
    the one-pixel lines it draws along the slits.
    """
    loops = [_inset_to_pixel_centres(lp) for lp in _boundary_loops(mask)]
    if not loops:
        raise ValueError("cannot describe an empty mask with a polygon")
    loops.sort(key=lambda lp: (-abs(_area2(lp)), lp[0]))
    poly: list[Any] = list(loops[0])
    for lp in loops[1:]:
        poly = _keyhole(poly, list(lp))
    return [[int(x), int(y)] for x, y in poly]

