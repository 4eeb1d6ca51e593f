"""Datasets of the transfer tasks, independent of any engine.

* `DatasetSpec`: where one named dataset lives (COCO json + images, a VOC year/split, a
  Cityscapes split) and the metadata an engine needs to register it (class names, keypoints).
  `builtin_dataset` maps the names used in the configs (``coco_2017_train``, ``voc_2007_test``,
  ``cityscapes_fine_sem_seg_val`` ...) to Detectron2's folder layout below a data root.
* `check_dataset`: what is missing, named precisely, before anything is launched.
* Cityscapes: the 8 instance / 19 semantic classes (from cityscapesScripts), loaders that read the
  official ``*_gtFine_instanceIds.png`` / ``*_gtFine_labelTrainIds.png`` files, and
  `prepare_cityscapes` (``detco-bench data prepare cityscapes``).

Both engines use these: the Detectron2 engine registers the dicts in its DatasetCatalog, the
torchvision engine builds its datasets from the same specs.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detco_bench.errors import UserError

DATA_ROOT_ENV = "DETECTRON2_DATASETS"
SYNTHETIC_MANIFEST = "synthetic_dataset.json"
SYNTHETIC_GENERATOR = "detco_bench.synthetic_layouts"

KINDS: tuple[str, ...] = ("coco", "voc", "cityscapes_instance", "cityscapes_sem_seg")

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

COCO_PERSON_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_PERSON_FLIP_MAP: tuple[tuple[str, str], ...] = tuple(
    (name, "right_" + name[len("left_") :]) for name in COCO_PERSON_KEYPOINTS if name.startswith("left_")
)
#: COCOeval's default OKS sigmas for the 17 COCO person keypoints.
COCO_PERSON_OKS_SIGMAS: tuple[float, ...] = (
    0.26,
    0.25,
    0.25,
    0.35,
    0.35,
    0.79,
    0.79,
    0.72,
    0.72,
    0.62,
    0.62,
    1.07,
    1.07,
    0.87,
    0.87,
    0.89,
    0.89,
)


def _cityscapes_labels() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]]:
    from cityscapesscripts.helpers.labels import labels, trainId2label

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
# Dataset specs


@dataclass
class DatasetSpec:
    """One named dataset: where its files are and what an engine needs to register it.

    kind: "coco" (json_file + image_root; keypoints=True for person-keypoint files), "voc"
    (voc_dir with Annotations/ImageSets/JPEGImages, split, year), "cityscapes_instance" /
    "cityscapes_sem_seg" (image_root = leftImg8bit/<split>, gt_dir = gtFine/<split>).
    meta: registration metadata; "thing_classes" (VOC, synthetic data), "keypoint_names",
    "keypoint_flip_map", "keypoint_connection_rules", "keypoint_oks_sigmas" (keypoint data).
    subset: for a semi-supervised subset, {"source", "fraction", "seed"}; json_file is then the
    generated subset file (written by the plan's prepare step).
    """

    name: str
    kind: str
    split: str
    image_root: str
    json_file: str | None = None
    keypoints: bool = False
    voc_dir: str | None = None
    year: str | None = None
    gt_dir: str | None = None
    subset: dict[str, Any] | None = None
    custom: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        return cls(**data)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: `root`, else $DETECTRON2_DATASETS, else ./datasets (Detectron2's rule)."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    return Path(os.environ.get(DATA_ROOT_ENV, "datasets")).expanduser()


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


def coco_person_keypoint_meta() -> dict[str, Any]:
    return {
        "keypoint_names": list(COCO_PERSON_KEYPOINTS),
        "keypoint_flip_map": [list(p) for p in COCO_PERSON_FLIP_MAP],
        "keypoint_oks_sigmas": list(COCO_PERSON_OKS_SIGMAS),
    }


def custom_coco_dataset(
    name: str, json_file: str | os.PathLike, image_root: str | os.PathLike, keypoints: bool = False
) -> DatasetSpec:
    """A user's COCO-format dataset (``--train-json/--val-json/--images``)."""
    return DatasetSpec(
        name=name,
        kind="coco",
        split=name.rsplit("_", 1)[-1],
        image_root=str(image_root),
        json_file=str(json_file),
        keypoints=keypoints,
        custom=True,
    )


def synthetic_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a `detco-bench data synthetic` root, or None for any other folder."""
    path = Path(root) / SYNTHETIC_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("generator") == SYNTHETIC_GENERATOR:
        return data
    return None


def read_coco_categories(json_file: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``categories`` of a COCO-format json (the whole file is parsed: use on small files)."""
    try:
        data = json.loads(Path(json_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {json_file}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {json_file}: {exc}") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats:
        raise UserError(f"{json_file}: a COCO-format file needs a non-empty 'categories' list")
    return sorted(cats, key=lambda c: c["id"])


def keypoint_flip_map(names: Iterable[str]) -> list[list[str]]:
    """left_*/right_* (and 'left'/'right') pairs among keypoint names: what a horizontal flip swaps."""
    names = list(names)
    pairs = []
    for n in names:
        if n.startswith("left"):
            twin = "right" + n[len("left") :]
            if twin in names:
                pairs.append([n, twin])
    return pairs


# --------------------------------------------------------------------------------------------
# Validation


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
    from PIL import Image

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
    import pycocotools.mask as mask_util
    from PIL import Image

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
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            return pool.map(_instances_of, files, chunksize=16)
    return [_instances_of(f) for f in files]


# --------------------------------------------------------------------------------------------
# `detco-bench data prepare cityscapes`


def cityscapes_root(root: str | os.PathLike) -> Path:
    """Accept the Cityscapes folder itself or a DETECTRON2_DATASETS root that contains it."""
    root = Path(root).expanduser()
    if (root / "gtFine").is_dir():
        return root
    if (root / "cityscapes" / "gtFine").is_dir():
        return root / "cityscapes"
    raise UserError(f"no gtFine/ folder in {root} (nor in {root / 'cityscapes'}): not a Cityscapes root")


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_train_ids(json_file: str) -> str:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    from pretrain.atomic import atomic_write_bytes

    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    image = createLabelImage(annotation, "trainIds")
    dst = json_file.replace("_polygons.json", "_labelTrainIds.png")
    atomic_write_bytes(dst, _png_bytes(np.asarray(image, dtype=np.uint8)))
    return dst


def _make_instance_ids(json_file: str) -> str:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    from pretrain.atomic import atomic_write_bytes

    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    # cityscapesScripts draws into a 32-bit "I" image and saves it as PNG, which Pillow >= 13
    # refuses ("cannot write mode I as PNG"). Label ids * 1000 + k stay below 34000, so the same
    # values are written as a 16-bit PNG, which is what the official files are.
    values = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
    if values.max() > np.iinfo(np.uint16).max:
        raise UserError(f"{json_file}: instance ids exceed 16 bits")
    dst = json_file.replace("_polygons.json", "_instanceIds.png")
    atomic_write_bytes(dst, _png_bytes(values.astype(np.uint16)))
    return dst


def prepare_cityscapes(
    root: str | os.PathLike,
    *,
    instance_ids: bool = False,
    force: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """cityscapesScripts' createTrainIdLabelImgs: ``*_gtFine_labelTrainIds.png`` for every
    ``gtFine/*/*/*_gt*_polygons.json`` (and gtCoarse when present), with cityscapesScripts'
    json2labelImg rendering. Existing outputs are kept unless `force`; files are written atomically.

    `instance_ids`: also create missing ``*_gtFine_instanceIds.png`` (cityscapesScripts'
    json2instanceImg rendering with "ids" encoding, saved as 16-bit PNG; see `_make_instance_ids`).
    Returns counts per output kind.
    """
    root = cityscapes_root(root)
    files = sorted(str(p) for p in root.glob("gtFine/*/*/*_gt*_polygons.json"))
    files += sorted(str(p) for p in root.glob("gtCoarse/*/*/*_gt*_polygons.json"))
    if not files:
        raise UserError(f"no gtFine/<split>/<city>/*_polygons.json files under {root}")
    jobs: list[tuple[Callable[[str], str], str]] = []
    skipped = {"labelTrainIds": 0, "instanceIds": 0}
    for f in files:
        if force or not Path(f.replace("_polygons.json", "_labelTrainIds.png")).exists():
            jobs.append((_make_train_ids, f))
        else:
            skipped["labelTrainIds"] += 1
        if instance_ids:
            if force or not Path(f.replace("_polygons.json", "_instanceIds.png")).exists():
                jobs.append((_make_instance_ids, f))
            else:
                skipped["instanceIds"] += 1
    written = {"labelTrainIds": 0, "instanceIds": 0}
    done = 0

    def count(dst: str) -> None:
        nonlocal done
        written["instanceIds" if dst.endswith("_instanceIds.png") else "labelTrainIds"] += 1
        done += 1
        if progress is not None:
            progress(done, len(jobs))

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for dst in pool.imap_unordered(_run_job, jobs, chunksize=8):
                count(dst)
    else:
        for job in jobs:
            count(_run_job(job))
    return {"root": str(root), "polygon_files": len(files), "written": written, "skipped_existing": skipped}


def _run_job(job: tuple[Callable[[str], str], str]) -> str:
    fn, arg = job
    return fn(arg)
