"""The datasets named in the configs (``coco_2017_train``, ``voc_2007_test``,
``cityscapes_fine_sem_seg_val`` ...) and where each lives below a data root, in Detectron2's
folder layout (`builtin_dataset`)."""

from __future__ import annotations

import os
from typing import Any

from detco_bench.datasets.cityscapes import CITYSCAPES_STUFF_CLASSES, CITYSCAPES_THING_CLASSES
from detco_bench.datasets.keypoints import coco_person_keypoint_meta
from detco_bench.datasets.spec import DatasetSpec, data_root
from detco_bench.datasets.voc import VOC_CLASSES
from detco_bench.errors import UserError

_COCO = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json", False, "train"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json", False, "val"),
    "keypoints_coco_2017_train": (
        "coco/train2017",
        "coco/annotations/person_keypoints_train2017.json",
        True,
        "train",
    ),
    "keypoints_coco_2017_val": (
        "coco/val2017",
        "coco/annotations/person_keypoints_val2017.json",
        True,
        "val",
    ),
}
_VOC = {
    "voc_2007_trainval": ("VOC2007", "trainval", "2007"),
    "voc_2012_trainval": ("VOC2012", "trainval", "2012"),
    "voc_2007_test": ("VOC2007", "test", "2007"),
}
_CITYSCAPES = {
    f"cityscapes_fine_{task}_{split}": (kind, split)
    for task, kind in (("instance_seg", "cityscapes_instance"), ("sem_seg", "cityscapes_sem_seg"))
    for split in ("train", "val", "test")
}
BUILTIN_DATASETS: tuple[str, ...] = (*_COCO, *_VOC, *_CITYSCAPES)


def builtin_dataset(name: str, root: str | os.PathLike | None = None) -> DatasetSpec:
    """The spec of a dataset named in the configs, in Detectron2's layout below `root`."""
    base = data_root(root)
    if name in _COCO:
        images, ann, keypoints, split = _COCO[name]
        spec = DatasetSpec(
            name=name,
            kind="coco",
            split=split,
            image_root=str(base / images),
            json_file=str(base / ann),
            keypoints=keypoints,
        )
        if keypoints:
            spec.meta.update(coco_person_keypoint_meta())
        return spec
    if name in _VOC:
        folder, split, year = _VOC[name]
        return DatasetSpec(
            name=name,
            kind="voc",
            split=split,
            image_root=str(base / folder / "JPEGImages"),
            voc_dir=str(base / folder),
            year=year,
            meta={"thing_classes": list(VOC_CLASSES)},
        )
    if name in _CITYSCAPES:
        kind, split = _CITYSCAPES[name]
        meta: dict[str, Any] = (
            {"thing_classes": list(CITYSCAPES_THING_CLASSES)}
            if kind == "cityscapes_instance"
            else {"stuff_classes": list(CITYSCAPES_STUFF_CLASSES), "ignore_label": 255}
        )
        return DatasetSpec(
            name=name,
            kind=kind,
            split=split,
            image_root=str(base / "cityscapes" / "leftImg8bit" / split),
            gt_dir=str(base / "cityscapes" / "gtFine" / split),
            meta=meta,
        )
    raise UserError(f"unknown dataset {name!r} in the config; known: {', '.join(BUILTIN_DATASETS)}")
