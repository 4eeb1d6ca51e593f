"""Write the synthetic scenes of `pretrain.synthetic` as real dataset layouts.

Every layout is produced from the same deterministic generator, so a dataset is a pure function of
(layout, num_train, num_val, seed, image_size) and is byte-identical wherever it is regenerated.
The layouts, all written below one output root (a `DETECTRON2_DATASETS`-style folder):

- ``images``      ``images/{train,val}/*.png``: unlabeled pretraining images.
- ``imagefolder`` ``imagenet/{train,val}/<class>/*.png``: torchvision ImageFolder / ImageNet style
  classification data; every image shows one large object of its class over small clutter.
- ``coco``        ``coco/{train2017,val2017}/*.jpg`` and ``coco/annotations/`` with
  ``instances_{train,val}2017.json`` (4 categories, polygon masks) and
  ``person_keypoints_{train,val}2017.json`` (every object as a 4-keypoint "person").
- ``voc``         ``VOC2007/`` and ``VOC2012/`` (Annotations, ImageSets/Main, JPEGImages).
- ``cityscapes``  ``cityscapes/leftImg8bit`` and ``cityscapes/gtFine`` (labelIds, instanceIds,
  color, polygons json) following cityscapesScripts' conventions.

Scene ``i`` of the training pool is ``render_scene(seed, i)`` and scene ``j`` of the evaluation pool
is ``render_scene(seed, VAL_INDEX_OFFSET + j)`` in every layout, so the same image appears as
``coco/train2017`` image ``i``, Cityscapes train frame ``i`` and so on. See docs/synthetic_data.md.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detco_bench.errors import UserError
from pretrain.atomic import atomic_write, atomic_write_bytes, atomic_write_json
from pretrain.synthetic import (
    CLASS_NAMES,
    KEYPOINT_NAMES,
    TEXTURES,
    Scene,
    _shape_mask,
    _texture,
    render_scene,
)

LAYOUTS: tuple[str, ...] = ("images", "imagefolder", "coco", "voc", "cityscapes")
"""Layouts `write_synthetic_dataset` writes; ``"all"`` writes every one of them."""

DEFAULT_IMAGE_SIZE: tuple[int, int] = (128, 128)
"""(height, width) of generated images unless told otherwise."""

MIN_SIDE, MAX_SIDE = 32, 4096
MAX_IMAGES_PER_SPLIT = 999_999

VAL_INDEX_OFFSET = 1 << 30
"""Evaluation scenes are `render_scene(seed, VAL_INDEX_OFFSET + j)`, disjoint from training scenes."""

COCO_VAL_ID_OFFSET = 1_000_000
"""COCO image ids: training image i has id i + 1, validation image j has id COCO_VAL_ID_OFFSET + j + 1."""

CLASSIFICATION_STREAM = 0x1C1A55
"""Extra seed word separating classification images from detection scenes."""

MANIFEST_NAME = "synthetic_dataset.json"
"""Written at the output root: what was generated and with which arguments (relative paths only)."""

PROGRESS_MIN_IMAGES = 200
"""A progress bar is shown (when asked for) once a layout writes at least this many images."""

# --- class mappings -------------------------------------------------------------------------------

COCO_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)
)
"""COCO instance categories: class id c is category id c + 1."""

KEYPOINT_SKELETON: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 4), (4, 1))
"""COCO-style (1-based) skeleton joining the four extreme points top-right-bottom-left-top."""

KEYPOINT_FLIP_MAP: tuple[tuple[str, str], ...] = (("left", "right"),)
"""Keypoint pairs swapped by a horizontal flip (Detectron2's `keypoint_flip_map` metadata)."""

KEYPOINT_OKS_SIGMAS: tuple[float, ...] = (0.05, 0.05, 0.05, 0.05)
"""Suggested per-keypoint OKS sigmas for COCOeval (`params.kpt_oks_sigmas`): sharp extreme points."""

COCO_KEYPOINT_CATEGORY: dict[str, Any] = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [list(pair) for pair in KEYPOINT_SKELETON],
}
"""The single category of the keypoint files: every object, whatever its shape, is a "person"."""

CITYSCAPES_CLASS_LABELS: tuple[str, ...] = ("car", "truck", "person", "bicycle")
"""Cityscapes label standing for each synthetic class (circle, square, triangle, ring)."""

CITYSCAPES_SKY, CITYSCAPES_ROAD = "sky", "road"
"""Background: rows above the horizon (the middle row) are sky, the rest road."""

CITYSCAPES_CITIES: dict[str, str] = {"train": "synthtrain", "val": "synthval"}

VOC_YEARS: tuple[str, ...] = ("2007", "2012")


def _split_sizes(num_train: int, num_val: int) -> dict[str, int]:
    return {"train": num_train, "val": num_val}


def scene_index(split: str, i: int) -> int:
    """The `render_scene` index of image `i` of `split` ("train" or "val")."""
    return i if split == "train" else VAL_INDEX_OFFSET + i


# --- polygons from masks ---------------------------------------------------------------------------

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


# --- classification images -------------------------------------------------------------------------

def render_classification_image(seed: int, index: int, class_id: int, height: int = 128,
                                width: int = 128) -> np.ndarray:
    """An (H, W, 3) uint8 image dominated by one large object of `class_id`.

    The background is drawn like `render_scene`'s; one to three small clutter objects of random
    classes go underneath a single object of `class_id` whose radius is 30-42% of the short side,
    so the label is the class of the largest (and only large) object.
    """
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class_id must be in [0, {len(CLASS_NAMES)}), got {class_id}")
    rng = np.random.default_rng([seed, CLASSIFICATION_STREAM, index, class_id])
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, size=3)
    gradient = (yy / max(height - 1, 1))[..., None] * rng.integers(-40, 40, size=3)
    noise = rng.normal(0.0, 12.0, size=(height, width, 3))
    canvas = np.clip(base + gradient + noise, 0, 255)
    short = min(height, width)

    def draw(cid: int, r: float, cx: float, cy: float) -> None:
        nonlocal canvas
        mask = _shape_mask(cid, yy, xx, cx, cy, r)
        color_a = rng.integers(0, 256, size=3)
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        fill = _texture(kind, yy, xx, color_a, 255 - color_a, period=int(rng.integers(3, 9)))
        canvas = np.where(mask[..., None], fill, canvas)

    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(0.06, 0.10) * short)
        draw(int(rng.integers(len(CLASS_NAMES))), r, float(rng.uniform(r, width - r)),
             float(rng.uniform(r, height - r)))
    r = float(rng.uniform(0.30, 0.42) * short)
    cx = float(np.clip(width / 2 + rng.uniform(-0.12, 0.12) * width, r, width - r))
    cy = float(np.clip(height / 2 + rng.uniform(-0.12, 0.12) * height, r, height - r))
    draw(class_id, r, cx, cy)
    return np.clip(canvas, 0, 255).astype(np.uint8)


# --- writing helpers -------------------------------------------------------------------------------

def _save_image(path: Path, image: np.ndarray | Image.Image, fmt: str) -> None:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    params: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda f: img.save(f, format=fmt, **params))


def _write_json_compact(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode())


@contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled or total < PROGRESS_MIN_IMAGES:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _summary(layout: str, root: Path, num_train: int, num_val: int, classes: list[str],
             paths: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {
        "layout": layout,
        "root": str(root),
        "counts": _split_sizes(num_train, num_val),
        "classes": classes,
        "paths": {k: str(v) for k, v in paths.items()},
        **extra,
    }


# --- layouts ---------------------------------------------------------------------------------------

def write_images(out: Path, *, num_train: int, num_val: int, seed: int = 0,
                 image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, progress: bool = False) -> dict[str, Any]:
    """Unlabeled scenes as ``out/images/{train,val}/<index>.png`` (pretraining data)."""
    root = Path(out) / "images"
    h, w = image_size
    with _progress(num_train + num_val, "images", progress) as advance:
        for split, n in _split_sizes(num_train, num_val).items():
            for i in range(n):
                scene = render_scene(seed, scene_index(split, i), h, w)
                _save_image(root / split / f"{i:06d}.png", scene.image, "PNG")
                advance()
    paths = {s: root / s for s, n in _split_sizes(num_train, num_val).items() if n}
    return _summary("images", root, num_train, num_val, [], paths)


def write_imagefolder(out: Path, *, num_train: int, num_val: int, seed: int = 0,
                      image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                      progress: bool = False) -> dict[str, Any]:
    """Classification data as ``out/imagenet/{train,val}/<class>/<class>_<index>.png``.

    Image i of a split has class ``i % 4`` (balanced up to one image per class). Note that
    torchvision's ImageFolder numbers classes by sorted folder name (circle, ring, square,
    triangle), not in `CLASS_NAMES` order.
    """
    root = Path(out) / "imagenet"
    h, w = image_size
    with _progress(num_train + num_val, "imagefolder", progress) as advance:
        for split, n in _split_sizes(num_train, num_val).items():
            for i in range(n):
                cid = i % len(CLASS_NAMES)
                image = render_classification_image(seed, scene_index(split, i), cid, h, w)
                name = CLASS_NAMES[cid]
                _save_image(root / split / name / f"{name}_{i:06d}.png", image, "PNG")
                advance()
    paths = {s: root / s for s in ("train", "val")}
    return _summary("imagefolder", root, num_train, num_val, list(CLASS_NAMES), paths)


def _coco_keypoints(scene_kp: np.ndarray) -> list[int]:
    # COCO keypoints are integer pixel indices (Detectron2 adds 0.5); ours are pixel centres.
    flat: list[int] = []
    for x, y, v in scene_kp.tolist():
        flat += [int(np.floor(x)), int(np.floor(y)), int(v)]
    return flat


def write_coco(out: Path, *, num_train: int, num_val: int, seed: int = 0,
               image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, progress: bool = False) -> dict[str, Any]:
    """Detectron2's COCO layout under ``out/coco`` (instances + person_keypoints annotations)."""
    root = Path(out) / "coco"
    h, w = image_size
    paths: dict[str, Path] = {}
    with _progress(num_train + num_val, "coco", progress) as advance:
        for split, n in _split_sizes(num_train, num_val).items():
            images, instances, keypoints = [], [], []
            for i in range(n):
                image_id = i + 1 if split == "train" else COCO_VAL_ID_OFFSET + i + 1
                file_name = f"{image_id:012d}.jpg"
                scene = render_scene(seed, scene_index(split, i), h, w)
                _save_image(root / f"{split}2017" / file_name, scene.image, "JPEG")
                images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
                for obj in scene.objects:
                    x0, y0, x1, y1 = obj.bbox_xyxy
                    common = {
                        "id": len(instances) + 1,
                        "image_id": image_id,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": float(obj.mask.sum()),
                        "segmentation": mask_to_polygons(obj.mask),
                        "iscrowd": 0,
                    }
                    instances.append({**common, "category_id": obj.class_id + 1})
                    kp = _coco_keypoints(obj.keypoints)
                    keypoints.append({**common, "category_id": 1, "keypoints": kp,
                                      "num_keypoints": sum(1 for v in kp[2::3] if v > 0),
                                      "shape": CLASS_NAMES[obj.class_id]})
                advance()
            info = {"description": "detco-bench synthetic scenes", "version": "1.0", "year": 2017,
                    "seed": seed}
            inst_path = root / "annotations" / f"instances_{split}2017.json"
            kp_path = root / "annotations" / f"person_keypoints_{split}2017.json"
            _write_json_compact(inst_path, {"info": info, "licenses": [], "images": images,
                                            "annotations": instances, "categories": list(COCO_CATEGORIES)})
            _write_json_compact(kp_path, {"info": info, "licenses": [], "images": images,
                                          "annotations": keypoints, "categories": [COCO_KEYPOINT_CATEGORY]})
            paths[f"instances_{split}"] = inst_path
            paths[f"keypoints_{split}"] = kp_path
            paths[f"images_{split}"] = root / f"{split}2017"
    return _summary("coco", root, num_train, num_val, list(CLASS_NAMES), paths)


def _voc_xml(folder: str, stem: str, scene: Scene) -> bytes:
    h, w = scene.image.shape[:2]
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = f"{stem}.jpg"
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = "detco-bench synthetic"
    ET.SubElement(source, "annotation").text = "synthetic"
    ET.SubElement(source, "image").text = "synthetic"
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(w)
    ET.SubElement(size, "height").text = str(h)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for obj in scene.objects:
        x0, y0, x1, y1 = (int(v) for v in obj.bbox_xyxy)
        node = ET.SubElement(ann, "object")
        ET.SubElement(node, "name").text = CLASS_NAMES[obj.class_id]
        ET.SubElement(node, "pose").text = "Unspecified"
        truncated = x0 == 0 or y0 == 0 or x1 == w or y1 == h
        ET.SubElement(node, "truncated").text = str(int(truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        # VOC: 1-based indices of the first and last pixel; [x0, x1) pixel edges -> x0 + 1 .. x1
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(value)
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="utf-8", xml_declaration=False) + b"\n"


def voc_split_plan(num_train: int, num_val: int) -> dict[str, dict[str, list[tuple[str, str, int]]]]:
    """Which scene goes where in the VOC layout: ``{year: {image_set: [(stem, split, i), ...]}}``.

    The training pool (num_train scenes) is shared between VOC2007 and VOC2012 trainval (2007 gets
    the first ceil(n/2)); inside each year's trainval alternate images go to train and val. The
    evaluation pool (num_val scenes) is VOC2007 test. VOC2012 test.txt is empty, as VOC2012's test
    annotations are not public either. This is the MoCo/DetCo protocol: train on 07+12 trainval,
    evaluate on 07 test.
    """
    n07 = (num_train + 1) // 2
    plan: dict[str, dict[str, list[tuple[str, str, int]]]] = {}
    for year, indices in (("2007", range(0, n07)), ("2012", range(n07, num_train))):
        items = [(f"{year}_{i:06d}", "train", i) for i in indices]
        plan[year] = {
            "train": items[0::2],
            "val": items[1::2],
            "trainval": items,
            "test": [(f"{year}_test_{j:06d}", "val", j) for j in range(num_val)] if year == "2007" else [],
        }
    return plan


def write_voc(out: Path, *, num_train: int, num_val: int, seed: int = 0,
              image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, progress: bool = False) -> dict[str, Any]:
    """Pascal VOC layout: ``out/VOC2007`` and ``out/VOC2012`` (see `voc_split_plan`)."""
    out = Path(out)
    h, w = image_size
    plan = voc_split_plan(num_train, num_val)
    with _progress(num_train + num_val, "voc", progress) as advance:
        for year, sets in plan.items():
            root = out / f"VOC{year}"
            for stem, split, i in sets["trainval"] + sets["test"]:
                scene = render_scene(seed, scene_index(split, i), h, w)
                _save_image(root / "JPEGImages" / f"{stem}.jpg", scene.image, "JPEG")
                atomic_write_bytes(root / "Annotations" / f"{stem}.xml", _voc_xml(f"VOC{year}", stem, scene))
                advance()
            for image_set, items in sets.items():
                text = "".join(f"{stem}\n" for stem, _, _ in items)
                atomic_write_bytes(root / "ImageSets" / "Main" / f"{image_set}.txt", text.encode())
    paths = {f"VOC{year}": out / f"VOC{year}" for year in VOC_YEARS}
    counts = {f"VOC{y}/{s}": len(items) for y, sets in plan.items() for s, items in sets.items()}
    return _summary("voc", out, num_train, num_val, list(CLASS_NAMES), paths, image_sets=counts)


def _cityscapes_label(name: str) -> Any:
    from cityscapesscripts.helpers.labels import name2label

    return name2label[name]


def _morph_reconstruct(seed: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pixels of `region` 4-connected (within `region`) to `seed`."""
    cur = seed & region
    while True:
        grown = cur.copy()
        grown[1:] |= cur[:-1]
        grown[:-1] |= cur[1:]
        grown[:, 1:] |= cur[:, :-1]
        grown[:, :-1] |= cur[:, 1:]
        grown &= region
        if np.array_equal(grown, cur):
            return cur
        cur = grown


def cityscapes_annotation(scene: Scene) -> dict[str, Any]:
    """Label images and polygons for one scene, the cityscapesScripts way.

    Returns ``labelIds`` (H, W) uint8, ``instanceIds`` (H, W) uint16, ``color`` (H, W, 4) uint8 and
    ``polygons`` (the gtFine json dict). Polygons are drawn in order (sky, road, then objects back
    to front) and later ones overwrite earlier ones, as in Cityscapes: an object's polygon also
    covers the parts of it that later objects hide, where they connect to its visible parts.
    """
    h, w = scene.image.shape[:2]
    horizon = h // 2
    sky, road = _cityscapes_label(CITYSCAPES_SKY), _cityscapes_label(CITYSCAPES_ROAD)
    label_ids = np.full((h, w), road.id, dtype=np.uint8)
    label_ids[:horizon] = sky.id
    instance_ids = label_ids.astype(np.uint16)
    objects: list[dict[str, Any]] = []
    if horizon > 0:
        objects.append({"label": sky.name, "polygon": [[0, 0], [w - 1, 0], [w - 1, horizon - 1],
                                                       [0, horizon - 1]]})
    objects.append({"label": road.name, "polygon": [[0, horizon], [w - 1, horizon], [w - 1, h - 1],
                                                    [0, h - 1]]})
    counts: dict[str, int] = {}
    later = np.zeros((h, w), dtype=bool)
    drawn = []
    for obj in reversed(scene.objects):
        region = _morph_reconstruct(obj.mask, obj.mask | later)
        drawn.append((obj, region))
        later |= obj.mask
    for obj, region in reversed(drawn):
        label = _cityscapes_label(CITYSCAPES_CLASS_LABELS[obj.class_id])
        k = counts.get(label.name, 0)
        counts[label.name] = k + 1
        label_ids[obj.mask] = label.id
        instance_ids[obj.mask] = label.id * 1000 + k
        objects.append({"label": label.name, "polygon": mask_to_cityscapes_polygon(region)})
    color = np.zeros((h, w, 4), dtype=np.uint8)
    color[..., 3] = 255
    from cityscapesscripts.helpers.labels import id2label

    for lid in np.unique(label_ids).tolist():
        color[label_ids == lid, :3] = id2label[lid].color
    polygons = {"imgHeight": h, "imgWidth": w, "objects": objects}
    return {"labelIds": label_ids, "instanceIds": instance_ids, "color": color, "polygons": polygons}


def write_cityscapes(out: Path, *, num_train: int, num_val: int, seed: int = 0,
                     image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                     progress: bool = False) -> dict[str, Any]:
    """Cityscapes layout under ``out/cityscapes`` (leftImg8bit + gtFine, no labelTrainIds).

    Frame i of a split is ``<city>_000000_<i:06d>``; cities are `CITYSCAPES_CITIES`. Run
    cityscapesScripts' createTrainIdLabelImgs (``detco-bench data prepare cityscapes``) to add
    the ``*_gtFine_labelTrainIds.png`` files.
    """
    root = Path(out) / "cityscapes"
    h, w = image_size
    with _progress(num_train + num_val, "cityscapes", progress) as advance:
        for split, n in _split_sizes(num_train, num_val).items():
            city = CITYSCAPES_CITIES[split]
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            for i in range(n):
                scene = render_scene(seed, scene_index(split, i), h, w)
                stem = f"{city}_000000_{i:06d}"
                ann = cityscapes_annotation(scene)
                _save_image(img_dir / f"{stem}_leftImg8bit.png", scene.image, "PNG")
                _save_image(gt_dir / f"{stem}_gtFine_labelIds.png", ann["labelIds"], "PNG")
                _save_image(gt_dir / f"{stem}_gtFine_instanceIds.png", ann["instanceIds"], "PNG")
                _save_image(gt_dir / f"{stem}_gtFine_color.png", ann["color"], "PNG")
                atomic_write_json(gt_dir / f"{stem}_gtFine_polygons.json", ann["polygons"])
                advance()
    paths = {"leftImg8bit": root / "leftImg8bit", "gtFine": root / "gtFine"}
    mapping = dict(zip(CLASS_NAMES, CITYSCAPES_CLASS_LABELS, strict=True))
    return _summary("cityscapes", root, num_train, num_val, list(CLASS_NAMES), paths,
                    cityscapes_labels=mapping)


WRITERS: dict[str, Callable[..., dict[str, Any]]] = {
    "images": write_images,
    "imagefolder": write_imagefolder,
    "coco": write_coco,
    "voc": write_voc,
    "cityscapes": write_cityscapes,
}

LAYOUT_FOLDERS: dict[str, tuple[str, ...]] = {
    "images": ("images",),
    "imagefolder": ("imagenet",),
    "coco": ("coco",),
    "voc": ("VOC2007", "VOC2012"),
    "cityscapes": ("cityscapes",),
}
"""Folders under the output root that each layout owns."""


# --- entry point -----------------------------------------------------------------------------------

def parse_image_size(text: str) -> tuple[int, int]:
    """``"96x128"`` -> (96, 128) as (height, width); raises UserError on anything else."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--size must look like HEIGHTxWIDTH (e.g. 96x128), got {text!r}")
    return int(parts[0]), int(parts[1])


def _validate(layout: str, num_train: int, num_val: int, image_size: tuple[int, int]) -> None:
    if layout != "all" and layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)} or all")
    for name, n in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES_PER_SPLIT:
            raise UserError(f"{name} must be an integer in [1, {MAX_IMAGES_PER_SPLIT}], got {n!r}")
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image size must be (height, width), got {image_size!r}") from None
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise UserError(f"image size {h}x{w} out of range: each side must be in [{MIN_SIDE}, {MAX_SIDE}]")


def _prepare_output(out: Path, layouts: list[str], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"output folder {out} is not empty; choose another --out or pass --force")
        # Replace only folders that an earlier run of this writer recorded in its manifest.
        manifest = out / MANIFEST_NAME
        try:
            previous = json.loads(manifest.read_text()).get("folders", []) if manifest.is_file() else []
        except (OSError, ValueError):
            previous = []
        ours = {f for lay in layouts for f in LAYOUT_FOLDERS[lay]}
        for folder in previous:
            if folder in ours and (out / folder).is_dir():
                shutil.rmtree(out / folder)
    out.mkdir(parents=True, exist_ok=True)


def write_synthetic_dataset(out: str | os.PathLike, layout: str, *, num_train: int, num_val: int,
                            seed: int = 0, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                            force: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write `layout` ("images", "imagefolder", "coco", "voc", "cityscapes" or "all") under `out`.

    Refuses a non-empty `out` unless `force`; with `force`, layout folders written earlier by this
    function (listed in ``out/synthetic_dataset.json``) are replaced and anything else is left in
    place. Returns a summary: root, per-layout paths, counts and classes (for "all", one summary per
    layout under "layouts"). Identical arguments give byte-identical files.
    """
    _validate(layout, num_train, num_val, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    out = Path(out)
    layouts = list(LAYOUTS) if layout == "all" else [layout]
    _prepare_output(out, layouts, force)
    summaries = {}
    for lay in layouts:
        summaries[lay] = WRITERS[lay](out, num_train=num_train, num_val=num_val, seed=seed,
                                      image_size=image_size, progress=progress)
    manifest = {
        "generator": "detco_bench.synthetic_layouts",
        "layouts": layouts,
        "folders": sorted({f for lay in layouts for f in LAYOUT_FOLDERS[lay]}),
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "image_size": list(image_size),
        "classes": list(CLASS_NAMES),
    }
    atomic_write_json(out / MANIFEST_NAME, manifest)
    if layout != "all":
        return {**summaries[layout], "manifest": str(out / MANIFEST_NAME)}
    return {
        "layout": "all",
        "root": str(out),
        "counts": _split_sizes(num_train, num_val),
        "classes": list(CLASS_NAMES),
        "layouts": summaries,
        "manifest": str(out / MANIFEST_NAME),
    }


def describe(summary: dict[str, Any]) -> str:
    """One line saying what `write_synthetic_dataset` wrote and where."""
    counts = summary["counts"]
    what = ", ".join(summary["layouts"]) if summary["layout"] == "all" else summary["layout"]
    return (f"wrote synthetic {what} ({counts['train']} train / {counts['val']} val images) "
            f"to {summary['root']}")
