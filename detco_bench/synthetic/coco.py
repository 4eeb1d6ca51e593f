"""The ``coco`` layout: Detectron2's COCO folders (``coco/{train,val}2017``, ``coco/annotations``)
with instances (4 categories, polygon masks) and person-keypoint files, and the category and
keypoint metadata a registration of this data needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detco_bench.synthetic.common import (
    DEFAULT_IMAGE_SIZE,
    layout_summary,
    progress_bar,
    save_image,
    scene_index,
    split_sizes,
    write_json_compact,
)
from detco_bench.synthetic.polygons import mask_to_polygons
from pretrain.synthetic import CLASS_NAMES, KEYPOINT_NAMES, render_scene

COCO_VAL_ID_OFFSET = 1_000_000
"""COCO image ids: training image i has id i + 1, validation image j has id COCO_VAL_ID_OFFSET + j + 1."""

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
    with progress_bar(num_train + num_val, "coco", progress) as advance:
        for split, n in split_sizes(num_train, num_val).items():
            images, instances, keypoints = [], [], []
            for i in range(n):
                image_id = i + 1 if split == "train" else COCO_VAL_ID_OFFSET + i + 1
                file_name = f"{image_id:012d}.jpg"
                scene = render_scene(seed, scene_index(split, i), h, w)
                save_image(root / f"{split}2017" / file_name, scene.image, "JPEG")
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
            write_json_compact(inst_path, {"info": info, "licenses": [], "images": images,
                                            "annotations": instances, "categories": list(COCO_CATEGORIES)})
            write_json_compact(kp_path, {"info": info, "licenses": [], "images": images,
                                          "annotations": keypoints, "categories": [COCO_KEYPOINT_CATEGORY]})
            paths[f"instances_{split}"] = inst_path
            paths[f"keypoints_{split}"] = kp_path
            paths[f"images_{split}"] = root / f"{split}2017"
    return layout_summary("coco", root, num_train, num_val, list(CLASS_NAMES), paths)
