"""The training and test datasets of the torchvision engine.

Training augmentation is Detectron2's, written with torchvision.transforms.v2 on tv_tensors so that
boxes (`BoundingBoxes`), masks (`Mask`) and keypoints (`KeyPoints`, with the flip map) move with the
image: for detection the INPUT.CROP crop (Detectron2's DatasetMapper puts it first), then
ResizeShortestEdge (MIN_SIZE_TRAIN "choice" or "range", MAX_SIZE_TRAIN), then for semantic
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

from detco_bench.engines.torchvision.data.crop import Window, crop_box, crop_polygons, mask_boxes, polygon_box
from detco_bench.engines.torchvision.data.images import annotation_mask, read_image, resize_mask, shortest_edge_size
from detco_bench.engines.torchvision.data.polygons import Polygons, as_polygons, pack_polygons, transform_polygons
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record
from detco_bench.engines.torchvision.settings import Settings


def sample_seed(seed: int, rank: int, position: int) -> int:
    """The augmentation seed of the `position`-th sample of `rank`'s stream."""
    return (int(seed) * 1_000_003 + int(rank) * 7_919 + int(position) * 104_729 + 12_345) % (2**62)


#: Detectron2's RandomCrop types (`TrainDataset._crop_size`).
CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=g))


class TrainDataset(Dataset):
    """Training samples: ``dataset[(index, seed)] -> (image float [3, H, W] in [0, 1], target)``.

    Detection targets: ``boxes`` float [N, 4] XYXY, ``labels`` int64 (+ label_offset), ``masks``
    uint8 [N, H, W] and (INPUT.MASK_FORMAT "polygon") the packed polygons ``polygon_xy`` /
    ``polygon_sizes`` / ``polygon_owner`` (mask_on; `_moved_masks`, `_pack_masks`), ``keypoints`` float
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
        if self.crop and self.crop_type not in CROP_TYPES:
            raise ValueError(f"INPUT.CROP.TYPE {self.crop_type!r}: {', '.join(CROP_TYPES)}")
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

    def _crop_window(self, g: torch.Generator, h: int, w: int) -> Window:
        """Detectron2's RandomCrop window (x0, y0, x1, y1) in an (h, w) image: its size, then its
        top, then its left offset, drawn in that order."""
        ch, cw = self._crop_size(g, h, w)
        y0, x0 = _randint(g, 0, h - ch), _randint(g, 0, w - cw)
        return x0, y0, x0 + cw, y0 + ch

    def _detection(self, rec: Record, image: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        anns = [a for a in rec["annotations"] if not a.get("iscrowd")]
        if self.mask_on:
            anns = [a for a in anns if a.get("segmentation") is not None]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["category"] + self.label_offset for a in anns], dtype=torch.int64)
        window: Window | None = None
        if self.crop:
            # Detectron2's DatasetMapper crops first, before the resize and the flip
            window = self._crop_window(g, h, w)
            x0, y0, x1, y1 = window
            image = image[:, y0:y1, x0:x1].contiguous()
            boxes = torch.from_numpy(crop_box(boxes.numpy(), window))
        ih, iw = int(image.shape[-2]), int(image.shape[-1])  # the image the resize sees
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(ih, iw)),
        }
        visibility = None
        if self.keypoint_on:
            k = len(self.meta.keypoint_names)
            kp = torch.tensor(
                [a.get("keypoints") or [0.0] * (3 * k) for a in anns], dtype=torch.float32
            ).reshape(-1, k, 3)
            visibility = kp[..., 2].clone()
            xy = kp[..., :2].contiguous()
            if window is not None:
                xy = xy - torch.tensor(window[:2], dtype=xy.dtype)  # outside the crop: hidden below
            sample["keypoints"] = tv_tensors.KeyPoints(xy, canvas_size=(ih, iw))
        size = self._size(g, ih, iw)
        if size != (ih, iw):
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
        out_h, out_w = (int(v) for v in sample["image"].shape[-2:])
        bxs = sample["boxes"].as_subclass(Tensor)
        flipped = self.flip if flip is not None else None
        if window is not None and self.mask_on:
            target = self._cropped_instances(anns, labels, (h, w), (out_h, out_w), flipped, window)
            keep = target.pop("keep")
        else:
            keep = ((bxs[:, 2] - bxs[:, 0]) > 1e-5) & ((bxs[:, 3] - bxs[:, 1]) > 1e-5)
            masks: dict[str, Tensor] = {}
            if self.mask_on:
                moved, polygons = self._moved_masks(anns, (h, w), (out_h, out_w), flipped)
                # filter_empty_instances: an RLE mask the resize lost is an empty instance too
                keep &= torch.tensor([p is not None or bool(m.any()) for m, p in zip(moved, polygons, strict=True)],
                                     dtype=torch.bool)
                kept = [i for i in range(len(anns)) if keep[i]]
                masks = self._pack_masks([moved[i] for i in kept], [polygons[i] for i in kept], (out_h, out_w))
            target = {"boxes": bxs[keep].float(), "labels": labels[keep], **masks}
        if self.keypoint_on and visibility is not None:
            xy = sample["keypoints"].as_subclass(Tensor)
            inside = (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] <= out_w) & (xy[..., 1] <= out_h)
            vis = torch.where(inside & (visibility > 0), visibility, torch.zeros_like(visibility))
            xy = xy * (vis > 0).unsqueeze(-1)
            target["keypoints"] = torch.cat([xy, vis.unsqueeze(-1)], dim=-1)[keep].float()
        img = sample["image"].as_subclass(Tensor).float().div_(255.0)
        return img, target

    def _cropped_instances(
        self,
        anns: list[dict[str, Any]],
        labels: Tensor,
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        flip: str | None,
        window: Window,
    ) -> dict[str, Tensor]:
        """Boxes, labels and masks of a cropped image with masks, as Detectron2 makes them when it
        crops (``recompute_boxes``): each box is the extent of the instance's cropped mask (its
        polygons' coordinates with INPUT.MASK_FORMAT "polygon", its pixels otherwise), and an
        instance whose box or mask is empty is dropped (``filter_empty_instances``). ``keep``:
        bool [N], the instances kept (for the keypoints)."""
        masks, polygons = self._moved_masks(anns, in_size, out_size, flip, window)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        nonempty = torch.zeros(len(anns), dtype=torch.bool)
        for i, (mask, polys) in enumerate(zip(masks, polygons, strict=True)):
            if self.mask_format == "polygon" and polys is not None:  # PolygonMasks
                boxes[i], nonempty[i] = polygon_box(polys), len(polys) > 0
            else:  # BitMasks
                boxes[i], nonempty[i] = mask_boxes(mask[None])[0], bool(mask.any())
        bxs = torch.from_numpy(boxes)
        keep = ((bxs[:, 2] - bxs[:, 0]) > 1e-5) & ((bxs[:, 3] - bxs[:, 1]) > 1e-5) & nonempty
        kept = [i for i in range(len(anns)) if keep[i]]
        out = {"boxes": bxs[keep].float(), "labels": labels[keep], "keep": keep}
        out.update(self._pack_masks([masks[i] for i in kept], [polygons[i] for i in kept], out_size))
        return out

    def _moved_masks(
        self,
        anns: list[dict[str, Any]],
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        flip: str | None,
        window: Window | None = None,
    ) -> tuple[list[np.ndarray], list[Polygons | None]]:
        """Per instance its mask uint8 [H', W'] in the output image and its polygons there (None for
        an RLE mask): cut to the crop `window` (if any), resized to `out_size`, flipped."""
        (h, w), (oh, ow) = in_size, out_size
        if window is not None:
            x0, y0, x1, y1 = window
            scale = (ow / (x1 - x0), oh / (y1 - y0))
        else:
            scale = (ow / w, oh / h)
        masks: list[np.ndarray] = []
        polygons: list[Polygons | None] = []
        for a in anns:
            segm = a["segmentation"]
            if isinstance(segm, list):
                polys = as_polygons(segm) if window is None else crop_polygons(as_polygons(segm), window)
                moved = transform_polygons(polys, scale, flip, out_size)
                masks.append(annotation_mask(moved, oh, ow) if moved else np.zeros((oh, ow), dtype=np.uint8))
                polygons.append(moved)
                continue
            mask = annotation_mask(segm, h, w)
            if window is not None:
                mask = np.ascontiguousarray(mask[window[1] : window[3], window[0] : window[2]])
            mask = resize_mask(mask, out_size)
            if flip is not None:
                mask = np.ascontiguousarray(np.flip(mask, axis=1 if flip == "horizontal" else 0))
            masks.append(mask)
            polygons.append(None)
        return masks, polygons

    def _pack_masks(
        self, masks: list[np.ndarray], polygons: list[Polygons | None], out_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """``masks``: uint8 [N, H', W'] full-image masks (polygons rasterised at the output size);
        with INPUT.MASK_FORMAT "polygon" also the packed polygons (`polygons.pack_polygons`), which
        the model rasterises per RoI, as Detectron2's PolygonMasks does."""
        oh, ow = out_size
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
