"""The ``cityscapes`` layout: ``cityscapes/leftImg8bit`` and ``cityscapes/gtFine`` (labelIds,
instanceIds, color, polygons json) following cityscapesScripts' conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import id2label, name2label

from detco_bench.synthetic.common import (
    DEFAULT_IMAGE_SIZE,
    layout_summary,
    progress_bar,
    save_image,
    scene_index,
    split_sizes,
)
from detco_bench.synthetic.polygons import mask_to_cityscapes_polygon
from pretrain.atomic import atomic_write_json
from pretrain.synthetic import CLASS_NAMES, Scene, render_scene

CITYSCAPES_CLASS_LABELS: tuple[str, ...] = ("car", "truck", "person", "bicycle")
"""Cityscapes label standing for each synthetic class (circle, square, triangle, ring)."""

CITYSCAPES_SKY, CITYSCAPES_ROAD = "sky", "road"
"""Background: rows above the horizon (the middle row) are sky, the rest road."""

CITYSCAPES_CITIES: dict[str, str] = {"train": "synthtrain", "val": "synthval"}


def _cityscapes_label(name: str) -> Any:
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
    with progress_bar(num_train + num_val, "cityscapes", progress) as advance:
        for split, n in split_sizes(num_train, num_val).items():
            city = CITYSCAPES_CITIES[split]
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            for i in range(n):
                scene = render_scene(seed, scene_index(split, i), h, w)
                stem = f"{city}_000000_{i:06d}"
                ann = cityscapes_annotation(scene)
                save_image(img_dir / f"{stem}_leftImg8bit.png", scene.image, "PNG")
                save_image(gt_dir / f"{stem}_gtFine_labelIds.png", ann["labelIds"], "PNG")
                save_image(gt_dir / f"{stem}_gtFine_instanceIds.png", ann["instanceIds"], "PNG")
                save_image(gt_dir / f"{stem}_gtFine_color.png", ann["color"], "PNG")
                atomic_write_json(gt_dir / f"{stem}_gtFine_polygons.json", ann["polygons"])
                advance()
    paths = {"leftImg8bit": root / "leftImg8bit", "gtFine": root / "gtFine"}
    mapping = dict(zip(CLASS_NAMES, CITYSCAPES_CLASS_LABELS, strict=True))
    return layout_summary("cityscapes", root, num_train, num_val, list(CLASS_NAMES), paths,
                          cityscapes_labels=mapping)
