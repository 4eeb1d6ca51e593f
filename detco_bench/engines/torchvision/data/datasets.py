"""The training and test datasets of the torchvision engine.

Training augmentation is Detectron2's, written with torchvision.transforms.v2 on tv_tensors so that
boxes (`BoundingBoxes`), masks (`Mask`) and keypoints (`KeyPoints`, with the flip map) move with the
image: ResizeShortestEdge (MIN_SIZE_TRAIN "choice" or "range", MAX_SIZE_TRAIN), then for semantic
segmentation the INPUT.CROP crop, then the INPUT.RANDOM_FLIP flip. Every random decision of a sample
comes from a generator seeded by (SEED, rank, position in the rank's sample stream), so a resumed run
sees the same images with the same augmentation as an uninterrupted one, whatever the workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from detco_bench.engines.torchvision.data.images import annotation_mask, read_image, resize_mask, shortest_edge_size
from detco_bench.engines.torchvision.data.polygons import Polygons, as_polygons, pack_polygons, transform_polygons
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record
from detco_bench.engines.torchvision.settings import Settings


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
    uint8 [N, H, W] and (INPUT.MASK_FORMAT "polygon") the packed polygons ``polygon_xy`` /
    ``polygon_sizes`` / ``polygon_owner`` (mask_on; `_instance_masks`), ``keypoints`` float
    [N, K, 3] (x, y, visibility; keypoint_on).
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
        self.mask_format = str(s["INPUT.MASK_FORMAT"])
        if self.mask_format not in ("polygon", "bitmask"):
            raise ValueError(f"INPUT.MASK_FORMAT {self.mask_format!r}: polygon or bitmask")
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
        if self.flip == "none" or _uniform(g) >= 0.5:
            return None
        return v2.RandomHorizontalFlip(p=1.0) if self.flip == "horizontal" else v2.RandomVerticalFlip(p=1.0)

    def _detection(self, rec: Record, image: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
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
            kept = [a for a, k in zip(anns, keep.tolist(), strict=True) if k]
            flipped = self.flip if flip is not None else None
            target.update(self._instance_masks(kept, (h, w), (int(out_h), int(out_w)), flipped))
        if self.keypoint_on and visibility is not None:
            xy = sample["keypoints"].as_subclass(Tensor)
            inside = (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] <= out_w) & (xy[..., 1] <= out_h)
            vis = torch.where(inside & (visibility > 0), visibility, torch.zeros_like(visibility))
            xy = xy * (vis > 0).unsqueeze(-1)
            target["keypoints"] = torch.cat([xy, vis.unsqueeze(-1)], dim=-1)[keep].float()
        img = sample["image"].as_subclass(Tensor).float().div_(255.0)
        return img, target

    def _instance_masks(
        self, anns: list[dict[str, Any]], in_size: tuple[int, int], out_size: tuple[int, int], flip: str | None
    ) -> dict[str, Tensor]:
        """The masks of the kept instances after the resize to `out_size` and the flip, as Detectron2
        transforms them: polygons are moved, RLE masks decoded and resized (nearest). ``masks``: uint8
        [N, H', W'] full-image masks (polygons rasterised at the output size); with INPUT.MASK_FORMAT
        "polygon" also the packed polygons (`polygons.pack_polygons`), which the model rasterises per
        RoI, as Detectron2's PolygonMasks does."""
        (h, w), (oh, ow) = in_size, out_size
        scale = (ow / w, oh / h)
        masks: list[np.ndarray] = []
        polygons: list[Polygons | None] = []
        for a in anns:
            segm = a["segmentation"]
            if isinstance(segm, list):
                moved = transform_polygons(as_polygons(segm), scale, flip, out_size)
                masks.append(annotation_mask(moved, oh, ow))
                polygons.append(moved)
                continue
            mask = resize_mask(annotation_mask(segm, h, w), out_size)
            if flip is not None:
                mask = np.ascontiguousarray(np.flip(mask, axis=1 if flip == "horizontal" else 0))
            masks.append(mask)
            polygons.append(None)
        out = {"masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, oh, ow), dtype=torch.uint8)}
        if self.mask_format == "polygon":
            out.update(pack_polygons(polygons))
        return out

    def _crop_size(self, g: torch.Generator, h: int, w: int) -> tuple[int, int]:
        t, cs = self.crop_type, self.crop_size
        if t == "relative":
            return int(h * cs[0] + 0.5), int(w * cs[1] + 0.5)
        if t == "relative_range":
            # Detectron2 holds the range's lower end in float32 (np.asarray(..., np.float32)) and
            # draws in float64: the same here, so a size on a rounding edge comes out the same.
            low_h, low_w = np.float32(cs[0]), np.float32(cs[1])
            ch = float(low_h) + _uniform(g) * float(np.float32(1) - low_h)
            cw = float(low_w) + _uniform(g) * float(np.float32(1) - low_w)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if t == "absolute":
            return min(int(cs[0]), h), min(int(cs[1]), w)
        if t == "absolute_range":
            ch = _randint(g, min(h, int(cs[0])), min(h, int(cs[1])))
            return ch, _randint(g, min(w, int(cs[0])), min(w, int(cs[1])))
        raise ValueError(f"INPUT.CROP.TYPE {t!r}")

    def _semantic(self, rec: Record, image: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        with Image.open(rec["sem_seg_file_name"]) as im:
            label = np.asarray(im, dtype=np.uint8)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        size = self._size(g, h, w)
        if size != (h, w):
            # the label map as Detectron2 resizes it (PIL's nearest; torch's samples half a pixel off)
            image = v2.Resize(list(size), antialias=True)(tv_tensors.Image(image))
            label = resize_mask(label, size)
        sample = {
            "image": tv_tensors.Image(image),
            "label": tv_tensors.Mask(torch.from_numpy(label.copy()).to(torch.int64)),
        }
        if self.crop:
            h, w = int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
            # RandomCrop_CategoryAreaConstraint: up to 10 tries for a crop where no single class
            # covers more than SINGLE_CATEGORY_MAX_AREA of the labelled pixels. Each try draws its
            # size too (the "_range" types), as Detectron2's does: a size that no window of the
            # image passes is not kept for the other tries.
            lab = sample["label"].as_subclass(Tensor)
            for _ in range(10 if self.crop_max_area < 1.0 else 1):
                ch, cw = self._crop_size(g, h, w)
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
