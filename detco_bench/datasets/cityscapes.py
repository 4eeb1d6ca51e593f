"""Cityscapes: its instance / semantic classes and readers of its official ground-truth files.

* The 8 instance classes and 19 train classes, taken from cityscapesScripts' label table.
* Loaders that read the official ``*_gtFine_instanceIds.png`` / ``*_gtFine_labelTrainIds.png``
  files into engine-independent dicts (boxes XYXY in absolute pixels, masks as COCO RLE).

Creating the derived ``labelTrainIds`` / ``instanceIds`` files is `cityscapes_prepare`'s job.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.helpers.labels import labels, trainId2label
from PIL import Image

from detco_bench.errors import UserError


def _cityscapes_labels() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]]:
    things = [lb for lb in labels if lb.hasInstances and not lb.ignoreInEval]
    stuff = [trainId2label[i] for i in range(19)]
    return (
        tuple(lb.name for lb in things),
        tuple(lb.id for lb in things),
        tuple(lb.name for lb in stuff),
        tuple(lb.id for lb in stuff),
    )


(CITYSCAPES_THING_CLASSES, CITYSCAPES_THING_IDS, CITYSCAPES_STUFF_CLASSES, CITYSCAPES_TRAINID_TO_ID) = (
    _cityscapes_labels()
)
"""The 8 Cityscapes instance classes (person ... bicycle) and their label ids; the 19 train classes
(road ... bicycle) in trainId order and the label id of each trainId (for writing predictions)."""


# --------------------------------------------------------------------------------------------
# Cityscapes loaders (engine independent: plain dicts, boxes XYXY in absolute pixels)


def cityscapes_files(image_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Per frame: image, and the gtFine files named after it (they may not all exist)."""
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    files = []
    for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for img in sorted(city.glob("*_leftImg8bit.png")):
            stem = img.name[: -len("leftImg8bit.png")]
            gt = gt_dir / city.name / stem
            files.append(
                {
                    "image": str(img),
                    "instance_ids": f"{gt}gtFine_instanceIds.png",
                    "label_ids": f"{gt}gtFine_labelIds.png",
                    "label_train_ids": f"{gt}gtFine_labelTrainIds.png",
                    "polygons": f"{gt}gtFine_polygons.json",
                }
            )
    if not files:
        raise UserError(f"no Cityscapes images (<city>/*_leftImg8bit.png) in {image_dir}")
    return files


def _image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.height, im.width


def load_cityscapes_semantic(image_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """[{file_name, sem_seg_file_name (labelTrainIds), height, width, image_id}] of a split."""
    out = []
    for f in cityscapes_files(image_dir, gt_dir):
        if not Path(f["label_train_ids"]).is_file():
            raise UserError(f"missing {f['label_train_ids']}: run detco-bench data prepare cityscapes")
        h, w = _image_size(f["image"])
        out.append(
            {
                "file_name": f["image"],
                "sem_seg_file_name": f["label_train_ids"],
                "height": h,
                "width": w,
                "image_id": Path(f["image"]).name[: -len("_leftImg8bit.png")],
            }
        )
    return out


def _instances_of(f: dict[str, str]) -> dict[str, Any]:
    with Image.open(f["instance_ids"]) as im:
        inst = np.asarray(im, dtype=np.int32)
    h, w = inst.shape
    annotations = []
    for value in np.unique(inst):
        if value < 1000:  # background, or a crowd ("group") region stored as its label id
            continue
        label_id = int(value) // 1000
        if label_id not in CITYSCAPES_THING_IDS:
            continue
        mask = inst == value
        ys, xs = np.nonzero(mask)
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "category_id": CITYSCAPES_THING_IDS.index(label_id),
                "iscrowd": 0,
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                "bbox_mode": 0,
                "segmentation": rle,
                "area": int(mask.sum()),
            }
        )
    return {
        "file_name": f["image"],
        "height": h,
        "width": w,
        "image_id": Path(f["image"]).name[: -len("_leftImg8bit.png")],
        "annotations": annotations,
    }


def load_cityscapes_instances(
    image_dir: str | os.PathLike, gt_dir: str | os.PathLike, workers: int | None = None
) -> list[dict[str, Any]]:
    """Instance annotations of a split read from the official ``*_gtFine_instanceIds.png`` files.

    One annotation per instance id >= 1000 of the 8 instance classes: ``bbox`` [x0, y0, x1, y1] in
    absolute pixels (``bbox_mode`` 0 = Detectron2's XYXY_ABS), ``segmentation`` as a COCO RLE of the
    exact instance mask, ``category_id`` the index in `CITYSCAPES_THING_CLASSES`. Crowd regions
    (pixels that carry only a label id) are not instances, as in cityscapesScripts' evaluation.
    """
    files = cityscapes_files(image_dir, gt_dir)
    missing = [f["instance_ids"] for f in files if not Path(f["instance_ids"]).is_file()]
    if missing:
        raise UserError(f"{len(missing)} *_gtFine_instanceIds.png missing, e.g. {missing[0]}")
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if workers > 1 and len(files) > 64:
        with mp.get_context("spawn").Pool(workers) as pool:
            return pool.map(_instances_of, files, chunksize=16)
    return [_instances_of(f) for f in files]
