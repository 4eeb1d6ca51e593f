"""The ``voc`` layout: Pascal VOC2007 / VOC2012 (Annotations, ImageSets/Main, JPEGImages) in
Detectron2's layout, split the MoCo/DetCo way (see `voc_split_plan`)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from detco_bench.synthetic.common import DEFAULT_IMAGE_SIZE, layout_summary, progress_bar, save_image, scene_index
from pretrain.atomic import atomic_write_bytes
from pretrain.synthetic import CLASS_NAMES, Scene, render_scene

VOC_YEARS: tuple[str, ...] = ("2007", "2012")


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
    with progress_bar(num_train + num_val, "voc", progress) as advance:
        for year, sets in plan.items():
            root = out / f"VOC{year}"
            for stem, split, i in sets["trainval"] + sets["test"]:
                scene = render_scene(seed, scene_index(split, i), h, w)
                save_image(root / "JPEGImages" / f"{stem}.jpg", scene.image, "JPEG")
                atomic_write_bytes(root / "Annotations" / f"{stem}.xml", _voc_xml(f"VOC{year}", stem, scene))
                advance()
            for image_set, items in sets.items():
                text = "".join(f"{stem}\n" for stem, _, _ in items)
                atomic_write_bytes(root / "ImageSets" / "Main" / f"{image_set}.txt", text.encode())
    paths = {f"VOC{year}": out / f"VOC{year}" for year in VOC_YEARS}
    counts = {f"VOC{y}/{s}": len(items) for y, sets in plan.items() for s, items in sets.items()}
    return layout_summary("voc", out, num_train, num_val, list(CLASS_NAMES), paths, image_sets=counts)
