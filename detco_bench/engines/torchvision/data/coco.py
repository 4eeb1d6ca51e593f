"""COCO json datasets -> records (boxes XYXY, polygons / RLE, keypoints as continuous coordinates)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from detco_bench.datasets import COCO_PERSON_OKS_SIGMAS, DatasetSpec, dataset_flip_map
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record
from detco_bench.engines.torchvision.settings import Settings


def quiet_coco(json_file: str) -> COCO:
    """pycocotools' COCO index of `json_file`, without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(json_file)


def _flip_indices(names: list[str], pairs: Sequence[Sequence[str]]) -> list[int]:
    perm = list(range(len(names)))
    for a, b in pairs:
        if a in names and b in names:
            i, j = names.index(a), names.index(b)
            perm[i], perm[j] = j, i
    return perm


def load_coco(spec: DatasetSpec, settings: Settings, keypoints: bool) -> tuple[list[Record], DatasetMeta]:
    """A COCO json dataset: one record per image (ids sorted), categories mapped to contiguous
    0-based labels in id order; with `keypoints`, names, flip permutation and OKS sigmas in the
    metadata (TEST.KEYPOINT_OKS_SIGMAS, else the spec's, else COCO's 17 for 17 keypoints)."""
    coco = quiet_coco(str(spec.json_file))
    cat_ids = sorted(coco.getCatIds())
    cats = coco.loadCats(cat_ids)
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    meta = DatasetMeta(classes=[c["name"] for c in cats], category_ids=cat_ids)
    if keypoints:
        names = list(spec.meta.get("keypoint_names") or cats[0].get("keypoints") or [])
        if not names:
            raise ValueError(f"{spec.json_file}: a keypoint dataset needs keypoint names")
        pairs = dataset_flip_map(spec.meta, names)
        meta.keypoint_names = names
        meta.keypoint_flip = _flip_indices(names, pairs)
        sigmas = list(settings.get("TEST.KEYPOINT_OKS_SIGMAS") or spec.meta.get("keypoint_oks_sigmas") or [])
        if not sigmas and len(names) == len(COCO_PERSON_OKS_SIGMAS):
            sigmas = list(COCO_PERSON_OKS_SIGMAS)
        meta.keypoint_oks_sigmas = [float(x) for x in sigmas]
    records = []
    image_root = Path(spec.image_root)
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        anns = []
        for a in coco.imgToAnns.get(img_id, []):
            if a.get("ignore", 0):
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            ann: dict[str, Any] = {
                "bbox": [x, y, x + w, y + h],
                "category": contiguous[a["category_id"]],
                "iscrowd": int(a.get("iscrowd", 0)),
            }
            segm = a.get("segmentation")
            if isinstance(segm, list):
                segm = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
                ann["segmentation"] = segm or None
            elif isinstance(segm, dict):
                ann["segmentation"] = segm
            if keypoints and a.get("keypoints"):
                kp = [float(v) for v in a["keypoints"]]
                for i in range(len(kp)):
                    if i % 3 != 2:
                        kp[i] += 0.5  # COCO stores pixel indices; +0.5 gives continuous coordinates
                ann["keypoints"] = kp
            anns.append(ann)
        records.append(
            {
                "file_name": str(image_root / info["file_name"]),
                "height": int(info["height"]),
                "width": int(info["width"]),
                "image_id": img_id,
                "annotations": anns,
            }
        )
    return records, meta
