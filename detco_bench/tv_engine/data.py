"""Datasets, augmentation and batching of the torchvision engine.

Records (one dict per image, engine-internal): ``file_name``, ``height``, ``width``, ``image_id``,
``annotations`` = [{``bbox`` [x0, y0, x1, y1] absolute pixels, ``category`` (0-based contiguous),
``iscrowd``, ``segmentation`` (COCO polygons or RLE, optional), ``keypoints`` [K*3] (optional)}],
or ``sem_seg_file_name`` for semantic segmentation. They come from the plan's `DatasetSpec`s:
COCO json through pycocotools (keypoint x/y + 0.5, as Detectron2 reads them), VOC xml (xmin/ymin - 1,
Detectron2's convention), Cityscapes through `detco_bench.transfer_data` (official instanceIds /
labelTrainIds files, cityscapesScripts labels).

Training augmentation is Detectron2's, written with torchvision.transforms.v2 on tv_tensors so that
boxes (`BoundingBoxes`), masks (`Mask`) and keypoints (`KeyPoints`, with the flip map) move with the
image: ResizeShortestEdge (MIN_SIZE_TRAIN "choice" or "range", MAX_SIZE_TRAIN), then for semantic
segmentation the INPUT.CROP crop, then the INPUT.RANDOM_FLIP flip. Every random decision of a sample
comes from a generator seeded by (SEED, rank, position in the rank's sample stream), so a resumed run
sees the same images with the same augmentation as an uninterrupted one, whatever the workers.

`TrainBatches` is Detectron2's TrainingSampler (an endless stream of seeded permutations, rank r
taking every world-th index) plus AspectRatioGroupedDataset (landscape and portrait images batched
separately); it starts at any iteration without loading images.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from detco_bench.transfer_data import (
    COCO_PERSON_OKS_SIGMAS,
    DatasetSpec,
    keypoint_flip_map,
    load_cityscapes_instances,
    load_cityscapes_semantic,
)
from detco_bench.tv_engine.settings import Settings

Record = dict[str, Any]


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge output size: the short side becomes `short` unless the long
    side would exceed `max_size`; sizes rounded to the nearest integer."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


@dataclass
class DatasetMeta:
    """What the model and the evaluators need to know about a dataset's labels."""

    classes: list[str]
    category_ids: list[int] | None = None  # COCO json category id of each contiguous class
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_flip: list[int] = field(default_factory=list)  # index permutation of a horizontal flip
    keypoint_oks_sigmas: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loading records


def _quiet_coco(json_file: str) -> Any:
    from pycocotools.coco import COCO

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
    coco = _quiet_coco(str(spec.json_file))
    cat_ids = sorted(coco.getCatIds())
    cats = coco.loadCats(cat_ids)
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    meta = DatasetMeta(classes=[c["name"] for c in cats], category_ids=cat_ids)
    if keypoints:
        names = list(spec.meta.get("keypoint_names") or cats[0].get("keypoints") or [])
        if not names:
            raise ValueError(f"{spec.json_file}: a keypoint dataset needs keypoint names")
        pairs = spec.meta.get("keypoint_flip_map") or keypoint_flip_map(names)
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
    path = Path(spec.voc_dir or "") / "ImageSets" / "Main" / f"{spec.split}.txt"
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def load_voc(spec: DatasetSpec) -> tuple[list[Record], DatasetMeta]:
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


def filter_training_records(
    records: list[Record], *, filter_empty: bool, min_keypoints: int = 0
) -> list[Record]:
    """Detectron2's training filters: images without (non-crowd) annotations, and for keypoint
    tasks images with fewer than MIN_KEYPOINTS_PER_IMAGE visible keypoints."""
    out = []
    for r in records:
        if "annotations" not in r:
            out.append(r)
            continue
        anns = [a for a in r["annotations"] if not a.get("iscrowd")]
        if filter_empty and not anns:
            continue
        if min_keypoints > 0:
            visible = sum(sum(1 for v in a.get("keypoints", [])[2::3] if v > 0) for a in anns)
            if visible < min_keypoints:
                continue
        out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# Images and targets


def read_image(path: str, fmt: str = "RGB") -> Tensor:
    """uint8 [3, H, W] in `fmt` ("RGB" or "BGR"), EXIF orientation applied (as Detectron2 reads)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        array = np.asarray(im, dtype=np.uint8).copy()
    t = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if fmt == "BGR":
        t = t.flip(0)
    elif fmt != "RGB":
        raise ValueError(f"INPUT.FORMAT {fmt!r}: the torchvision engine reads RGB or BGR")
    return t


def annotation_mask(segm: Any, h: int, w: int) -> np.ndarray:
    """A COCO polygon list or RLE (compressed or not) -> uint8 [H, W]."""
    import pycocotools.mask as mask_util

    if isinstance(segm, list):
        rles = mask_util.frPyObjects(segm, h, w)
        rle = mask_util.merge(rles)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, h, w)
    else:
        rle = dict(segm)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(np.uint8)


def sample_seed(seed: int, rank: int, position: int) -> int:
    """The augmentation seed of the `position`-th sample of `rank`'s stream."""
    return (int(seed) * 1_000_003 + int(rank) * 7_919 + int(position) * 104_729 + 12_345) % (2**62)


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=g))


class TrainDataset(Dataset):
    """Training samples: ``dataset[(index, seed)] -> (image float [3, H, W] in [0, 1], target)``.

    Detection targets: ``boxes`` float [N, 4] XYXY, ``labels`` int64 (+ label_offset), ``masks``
    uint8 [N, H, W] (mask_on), ``keypoints`` float [N, K, 3] (x, y, visibility; keypoint_on).
    Semantic targets: int64 [H, W] train ids (IGNORE_VALUE where unlabeled).
    """

    def __init__(
        self,
        records: list[Record],
        settings: Settings,
        meta: DatasetMeta,
        *,
        task: str,
        label_offset: int = 1,
        mask_on: bool = False,
        keypoint_on: bool = False,
    ) -> None:
        s = settings
        self.records = records
        self.meta = meta
        self.task = task  # "detection" or "sem_seg"
        self.label_offset = label_offset
        self.mask_on = mask_on
        self.keypoint_on = keypoint_on
        self.fmt = str(s["INPUT.FORMAT"])
        self.min_sizes = [int(v) for v in s.list("INPUT.MIN_SIZE_TRAIN")]
        self.sampling = str(s["INPUT.MIN_SIZE_TRAIN_SAMPLING"])
        if self.sampling not in ("choice", "range"):
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING {self.sampling!r}: choice or range")
        if self.sampling == "range" and len(self.min_sizes) != 2:
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN with range sampling needs 2 values, got {self.min_sizes}")
        self.max_size = int(s["INPUT.MAX_SIZE_TRAIN"])
        self.flip = str(s["INPUT.RANDOM_FLIP"])
        self.crop = bool(s["INPUT.CROP.ENABLED"])
        self.crop_type = str(s["INPUT.CROP.TYPE"])
        self.crop_size = [float(v) for v in s.list("INPUT.CROP.SIZE")]
        self.crop_max_area = float(s.get("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", 1.0))
        self.ignore = int(s.get("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 255))
        if self.crop and task != "sem_seg":
            raise ValueError("INPUT.CROP for detection tasks is not supported by the torchvision engine")
        if self.flip not in ("horizontal", "vertical", "none"):
            raise ValueError(f"INPUT.RANDOM_FLIP {self.flip!r}: horizontal, vertical or none")
        if self.flip == "vertical" and keypoint_on:
            raise ValueError("vertical flips of keypoints are not supported")

    def __len__(self) -> int:
        return len(self.records)

    def _size(self, g: torch.Generator, h: int, w: int) -> tuple[int, int]:
        if self.sampling == "choice":
            short = self.min_sizes[_randint(g, 0, len(self.min_sizes) - 1)]
        else:
            short = _randint(g, self.min_sizes[0], self.min_sizes[1])
        if short <= 0:
            return h, w
        return shortest_edge_size(h, w, short, self.max_size)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Any]:
        index, seed = item
        g = torch.Generator().manual_seed(int(seed))
        rec = self.records[index]
        image = read_image(rec["file_name"], self.fmt)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if rec.get("height") not in (None, h) or rec.get("width") not in (None, w):
            raise ValueError(
                f"{rec['file_name']}: image is {w}x{h} but its annotation says {rec.get('width')}x{rec.get('height')}"
            )
        if self.task == "sem_seg":
            return self._semantic(rec, image, g)
        return self._detection(rec, image, g)

    def _flip_transform(self, g: torch.Generator) -> Any:
        from torchvision.transforms import v2

        if self.flip == "none" or _uniform(g) >= 0.5:
            return None
        return v2.RandomHorizontalFlip(p=1.0) if self.flip == "horizontal" else v2.RandomVerticalFlip(p=1.0)

    def _detection(self, rec: Record, image: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        h, w = int(image.shape[-2]), int(image.shape[-1])
        anns = [a for a in rec["annotations"] if not a.get("iscrowd")]
        if self.mask_on:
            anns = [a for a in anns if a.get("segmentation") is not None]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["category"] + self.label_offset for a in anns], dtype=torch.int64)
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        }
        if self.mask_on:
            masks = np.stack([annotation_mask(a["segmentation"], h, w) for a in anns]) if anns else np.zeros(
                (0, h, w), np.uint8
            )
            sample["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        visibility = None
        if self.keypoint_on:
            k = len(self.meta.keypoint_names)
            kp = torch.tensor(
                [a.get("keypoints") or [0.0] * (3 * k) for a in anns], dtype=torch.float32
            ).reshape(-1, k, 3)
            visibility = kp[..., 2].clone()
            sample["keypoints"] = tv_tensors.KeyPoints(kp[..., :2].contiguous(), canvas_size=(h, w))
        size = self._size(g, h, w)
        if size != (h, w):
            sample = v2.Resize(list(size), antialias=True)(sample)
        flip = self._flip_transform(g)
        if flip is not None:
            sample = flip(sample)
            if "keypoints" in sample and visibility is not None:
                # torchvision flips points as pixel indices (x -> W - 1 - x); our keypoints are
                # continuous coordinates like the boxes (x -> W - x), and left/right swap names.
                kp = sample["keypoints"].as_subclass(Tensor).clone()
                kp[..., 0] += 1.0
                perm = self.meta.keypoint_flip
                sample["keypoints"] = tv_tensors.KeyPoints(kp[:, perm], canvas_size=sample["keypoints"].canvas_size)
                visibility = visibility[:, perm]
        sample["boxes"] = v2.ClampBoundingBoxes()(sample["boxes"])
        out_h, out_w = sample["image"].shape[-2:]
        bxs = sample["boxes"].as_subclass(Tensor)
        keep = ((bxs[:, 2] - bxs[:, 0]) > 1e-5) & ((bxs[:, 3] - bxs[:, 1]) > 1e-5)
        target: dict[str, Tensor] = {"boxes": bxs[keep].float(), "labels": labels[keep]}
        if self.mask_on:
            target["masks"] = sample["masks"].as_subclass(Tensor)[keep].to(torch.uint8)
        if self.keypoint_on and visibility is not None:
            xy = sample["keypoints"].as_subclass(Tensor)
            inside = (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] <= out_w) & (xy[..., 1] <= out_h)
            vis = torch.where(inside & (visibility > 0), visibility, torch.zeros_like(visibility))
            xy = xy * (vis > 0).unsqueeze(-1)
            target["keypoints"] = torch.cat([xy, vis.unsqueeze(-1)], dim=-1)[keep].float()
        img = sample["image"].as_subclass(Tensor).float().div_(255.0)
        return img, target

    def _crop_size(self, g: torch.Generator, h: int, w: int) -> tuple[int, int]:
        t, cs = self.crop_type, self.crop_size
        if t == "relative":
            return int(h * cs[0] + 0.5), int(w * cs[1] + 0.5)
        if t == "relative_range":
            ch = cs[0] + _uniform(g) * (1 - cs[0])
            cw = cs[1] + _uniform(g) * (1 - cs[1])
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if t == "absolute":
            return min(int(cs[0]), h), min(int(cs[1]), w)
        if t == "absolute_range":
            ch = _randint(g, min(h, int(cs[0])), min(h, int(cs[1])))
            return ch, _randint(g, min(w, int(cs[0])), min(w, int(cs[1])))
        raise ValueError(f"INPUT.CROP.TYPE {t!r}")

    def _semantic(self, rec: Record, image: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        with Image.open(rec["sem_seg_file_name"]) as im:
            label = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).to(torch.int64)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        sample = {"image": tv_tensors.Image(image), "label": tv_tensors.Mask(label)}
        size = self._size(g, h, w)
        if size != (h, w):
            sample = v2.Resize(list(size), antialias=True)(sample)
        if self.crop:
            h, w = int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
            ch, cw = self._crop_size(g, h, w)
            # RandomCrop_CategoryAreaConstraint: up to 10 tries for a crop where no single class
            # covers more than SINGLE_CATEGORY_MAX_AREA of the labelled pixels.
            lab = sample["label"].as_subclass(Tensor)
            for _ in range(10 if self.crop_max_area < 1.0 else 1):
                y0, x0 = _randint(g, 0, h - ch), _randint(g, 0, w - cw)
                if self.crop_max_area >= 1.0:
                    break
                part = lab[y0 : y0 + ch, x0 : x0 + cw]
                _, counts = torch.unique(part[part != self.ignore], return_counts=True)
                if len(counts) > 1 and counts.max().item() < self.crop_max_area * counts.sum().item():
                    break
            sample = {k: v2.functional.crop(v, y0, x0, ch, cw) for k, v in sample.items()}
        flip = self._flip_transform(g)
        if flip is not None:
            sample = flip(sample)
        img = sample["image"].as_subclass(Tensor).float().div_(255.0)
        return img, sample["label"].as_subclass(Tensor).to(torch.int64)


class TestDataset(Dataset):
    """Evaluation samples: ``dataset[i] -> (image float [3, H, W] in [0, 1], record)``; models
    resize for testing themselves."""

    def __init__(self, records: list[Record], fmt: str) -> None:
        self.records = records
        self.fmt = fmt

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Record]:
        rec = self.records[i]
        return read_image(rec["file_name"], self.fmt).float().div_(255.0), rec


# --------------------------------------------------------------------------------------------
# Batching


class TrainBatches:
    """Endless training batches of ``(index, augmentation_seed)`` for one rank, from iteration
    `start_iter` on.

    Detectron2's TrainingSampler + AspectRatioGroupedDataset: the index stream is
    ``randperm(n)`` again and again from one generator seeded with `seed` (the same on every rank),
    rank r taking elements r, r + world, ...; samples are grouped by orientation (width > height or
    not) and a batch is emitted when a group has `batch_size` samples. Everything is computed from
    (seed, rank, world), so batch k is the same whether or not the run was interrupted before it.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_iter: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not group_ids:
            raise ValueError("no training images")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world = world
        self.start_iter = start_iter

    def _indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        n = len(self.group_ids)

        def stream() -> Iterator[int]:
            while True:
                yield from torch.randperm(n, generator=g).tolist()

        return itertools.islice(stream(), self.rank, None, self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = {}
        produced = 0
        for position, idx in enumerate(self._indices()):
            bucket = buckets.setdefault(self.group_ids[idx], [])
            bucket.append((idx, sample_seed(self.seed, self.rank, position)))
            if len(bucket) == self.batch_size:
                batch = list(bucket)
                bucket.clear()
                if produced >= self.start_iter:
                    yield batch
                produced += 1


def group_ids(records: list[Record], grouping: bool) -> list[int]:
    if not grouping:
        return [0] * len(records)
    return [0 if int(r["width"]) > int(r["height"]) else 1 for r in records]


def _collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def train_loader(dataset: TrainDataset, batches: TrainBatches, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def shard(n: int, rank: int, world: int) -> range:
    """Detectron2's InferenceSampler: contiguous, near-equal shards of range(n)."""
    size, left = divmod(n, world)
    sizes = [size + int(r < left) for r in range(world)]
    begin = sum(sizes[:rank])
    return range(begin, begin + sizes[rank])


def test_loader(dataset: TestDataset, rank: int, world: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        sampler=list(shard(len(dataset), rank, world)),
        batch_size=1,
        num_workers=workers,
        collate_fn=_collate,
    )
