"""The plan's datasets in detectron2's DatasetCatalog / MetadataCatalog.

Each dataset's metadata carries ``evaluator_type`` = its `DatasetSpec.kind` (``coco``, ``voc``,
``cityscapes_instance``, ``cityscapes_sem_seg``), which the trainer's `build_evaluator` dispatches
on.
"""

from __future__ import annotations

from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import register_pascal_voc
from detectron2.structures import BoxMode

from detco_bench.datasets import DatasetSpec, dataset_flip_map, load_cityscapes_instances, load_cityscapes_semantic
from detco_bench.transfer.plan import TransferPlan


def _cityscapes_instance_dicts(image_dir: str, gt_dir: str) -> list[dict[str, Any]]:
    """Our Cityscapes instance loader's dicts, with the box mode detectron2 needs (XYXY_ABS)."""
    dicts = load_cityscapes_instances(image_dir, gt_dir)
    for d in dicts:
        for a in d["annotations"]:
            a["bbox_mode"] = BoxMode.XYXY_ABS
    return dicts


def _register(name: str, spec: DatasetSpec) -> None:
    if spec.kind == "coco":
        register_coco_instances(name, {}, spec.json_file, spec.image_root)
        meta = MetadataCatalog.get(name)
        if spec.keypoints:
            names = spec.meta["keypoint_names"]
            meta.set(
                keypoint_names=list(names),
                keypoint_flip_map=[tuple(p) for p in dataset_flip_map(spec.meta, names)],
            )
            rules = spec.meta.get("keypoint_connection_rules")
            if rules:
                meta.set(keypoint_connection_rules=[(a, b, tuple(c)) for a, b, c in rules])
    elif spec.kind == "voc":
        register_pascal_voc(
            name,
            spec.voc_dir,
            spec.split,
            int(spec.year or 2007),
            class_names=list(spec.meta["thing_classes"]),
        )
    elif spec.kind == "cityscapes_instance":
        DatasetCatalog.register(name, lambda i=spec.image_root, g=spec.gt_dir: _cityscapes_instance_dicts(i, g))
        MetadataCatalog.get(name).set(
            thing_classes=list(spec.meta["thing_classes"]), image_dir=spec.image_root, gt_dir=spec.gt_dir
        )
    elif spec.kind == "cityscapes_sem_seg":
        DatasetCatalog.register(name, lambda i=spec.image_root, g=spec.gt_dir: load_cityscapes_semantic(i, g))
        MetadataCatalog.get(name).set(
            stuff_classes=list(spec.meta["stuff_classes"]),
            ignore_label=255,
            image_dir=spec.image_root,
            gt_dir=spec.gt_dir,
        )
    else:
        raise ValueError(f"unknown dataset kind {spec.kind!r} for {name}")
    # register_coco_instances already set "coco"; Metadata.set accepts the same value again.
    MetadataCatalog.get(name).set(evaluator_type=spec.kind)


def register_datasets(plan: TransferPlan) -> None:
    """(Re-)register every dataset of the plan under the names its config uses."""
    for name, spec in plan.datasets.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        _register(name, spec)
