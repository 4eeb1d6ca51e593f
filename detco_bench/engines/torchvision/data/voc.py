"""Pascal VOC datasets (``ImageSets/Main/<split>.txt`` + xml annotations) -> records."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from detco_bench.datasets import DatasetSpec
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record


def parse_voc_xml(path: str | Path) -> dict[str, Any]:
    """A VOC annotation: size and objects (name, difficult, bbox as written: 1-based inclusive)."""
    tree = ET.parse(path)
    size = tree.find("size")
    objs = []
    for obj in tree.findall("object"):
        bb = obj.find("bndbox")
        diff = obj.find("difficult")
        objs.append(
            {
                "name": obj.find("name").text.strip(),
                "difficult": int(diff.text) if diff is not None and diff.text else 0,
                "bbox": [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")],
            }
        )
    return {
        "width": int(size.find("width").text) if size is not None else None,
        "height": int(size.find("height").text) if size is not None else None,
        "objects": objs,
    }


def voc_stems(spec: DatasetSpec) -> list[str]:
    """The image ids of the spec's split (``ImageSets/Main/<split>.txt``)."""
    path = Path(spec.voc_dir or "") / "ImageSets" / "Main" / f"{spec.split}.txt"
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def load_voc(spec: DatasetSpec) -> tuple[list[Record], DatasetMeta]:
    """A VOC split: one record per image id, labels by the spec's class names (difficult objects kept)."""
    classes = list(spec.meta["thing_classes"])
    voc = Path(spec.voc_dir or "")
    records = []
    for stem in voc_stems(spec):
        ann = parse_voc_xml(voc / "Annotations" / f"{stem}.xml")
        anns = []
        for obj in ann["objects"]:
            if obj["name"] not in classes:
                raise ValueError(f"{voc / 'Annotations' / stem}.xml: class {obj['name']!r} not in {classes}")
            x0, y0, x1, y1 = obj["bbox"]
            # Detectron2: 1-based inclusive pixel indices -> continuous [x0 - 1, x1]; difficult kept.
            anns.append({"bbox": [x0 - 1.0, y0 - 1.0, x1, y1], "category": classes.index(obj["name"]), "iscrowd": 0})
        records.append(
            {
                "file_name": str(voc / "JPEGImages" / f"{stem}.jpg"),
                "height": ann["height"],
                "width": ann["width"],
                "image_id": stem,
                "annotations": anns,
            }
        )
    return records, DatasetMeta(classes=classes)
