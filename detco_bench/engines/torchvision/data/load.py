"""One dataset of the plan -> records and label metadata, by `DatasetSpec.kind`."""

from __future__ import annotations

from detco_bench.datasets import DatasetSpec, load_cityscapes_instances, load_cityscapes_semantic
from detco_bench.engines.torchvision.data.coco import load_coco
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record
from detco_bench.engines.torchvision.data.voc import load_voc
from detco_bench.engines.torchvision.settings import Settings


def load_records(spec: DatasetSpec, settings: Settings, keypoints: bool = False) -> tuple[list[Record], DatasetMeta]:
    """The records and label metadata of one dataset of the plan."""
    if spec.kind == "coco":
        return load_coco(spec, settings, keypoints)
    if spec.kind == "voc":
        return load_voc(spec)
    if spec.kind == "cityscapes_instance":
        dicts = load_cityscapes_instances(spec.image_root, spec.gt_dir or "")
        records = []
        for d in dicts:
            anns = [
                {
                    "bbox": list(a["bbox"]),
                    "category": int(a["category_id"]),
                    "iscrowd": 0,
                    "segmentation": a["segmentation"],
                }
                for a in d["annotations"]
            ]
            records.append({**{k: d[k] for k in ("file_name", "height", "width", "image_id")}, "annotations": anns})
        return records, DatasetMeta(classes=list(spec.meta["thing_classes"]))
    if spec.kind == "cityscapes_sem_seg":
        return load_cityscapes_semantic(spec.image_root, spec.gt_dir or ""), DatasetMeta(
            classes=list(spec.meta["stuff_classes"])
        )
    raise ValueError(f"unknown dataset kind {spec.kind!r}")
