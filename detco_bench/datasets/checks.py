"""`check_dataset`: what stops a dataset from being used, each problem naming the missing path, so
that nothing is launched on incomplete data."""

from __future__ import annotations

from pathlib import Path

from detco_bench.datasets.coco import coco_content_problems
from detco_bench.datasets.spec import DatasetSpec


def _first(pattern: str, folder: Path) -> Path | None:
    return next(iter(folder.glob(pattern)), None) if folder.is_dir() else None


def check_dataset(spec: DatasetSpec) -> list[str]:
    """Problems that stop `spec` from being used, each naming the missing path; [] when usable."""
    problems: list[str] = []
    if spec.kind == "coco":
        what = "custom" if spec.custom else "COCO"
        if not Path(spec.image_root).is_dir():
            problems.append(f"{spec.name}: {what} images folder not found: {spec.image_root}")
        ann = Path(spec.subset["source"]) if spec.subset else Path(spec.json_file or "")
        if not ann.is_file():
            problems.append(f"{spec.name}: {what} annotation file not found: {ann}")
        elif Path(spec.image_root).is_dir():
            problems.extend(coco_content_problems(spec.name, ann, Path(spec.image_root)))
    elif spec.kind == "voc":
        voc = Path(spec.voc_dir or "")
        if not voc.is_dir():
            problems.append(
                f"{spec.name}: VOC{spec.year} folder not found: {voc} (expected Annotations/, "
                "ImageSets/Main/, JPEGImages/ inside)"
            )
        else:
            for sub in ("Annotations", "JPEGImages"):
                if not (voc / sub).is_dir():
                    problems.append(f"{spec.name}: VOC{spec.year} {sub}/ folder missing: {voc / sub}")
            split_file = voc / "ImageSets" / "Main" / f"{spec.split}.txt"
            if not split_file.is_file():
                problems.append(f"{spec.name}: VOC{spec.year} image set missing: {split_file}")
    elif spec.kind in ("cityscapes_instance", "cityscapes_sem_seg"):
        images, gt = Path(spec.image_root), Path(spec.gt_dir or "")
        if not images.is_dir():
            problems.append(f"{spec.name}: Cityscapes leftImg8bit/{spec.split} folder not found: {images}")
        elif _first("*/*_leftImg8bit.png", images) is None:
            problems.append(f"{spec.name}: no <city>/*_leftImg8bit.png images in {images}")
        if not gt.is_dir():
            problems.append(f"{spec.name}: Cityscapes gtFine/{spec.split} folder not found: {gt}")
        else:
            need = ["instanceIds"] if spec.kind == "cityscapes_instance" else ["labelTrainIds"]
            if spec.kind == "cityscapes_sem_seg" and spec.split != "train":
                need.append("labelIds")  # cityscapesScripts evaluates against the labelIds files
            for suffix in need:
                if _first(f"*/*_gtFine_{suffix}.png", gt) is None:
                    hint = ""
                    if suffix == "labelTrainIds":
                        root = gt.parent.parent
                        hint = f" (run: detco-bench data prepare cityscapes --root {root})"
                    elif suffix == "instanceIds":
                        hint = (
                            f" (the official gtFine download has them; or run: detco-bench data prepare "
                            f"cityscapes --root {gt.parent.parent} --instance-ids)"
                        )
                    problems.append(f"{spec.name}: no *_gtFine_{suffix}.png under {gt}{hint}")
    else:
        problems.append(f"{spec.name}: unknown dataset kind {spec.kind!r}")
    return problems
