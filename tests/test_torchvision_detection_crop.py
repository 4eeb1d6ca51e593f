"""INPUT.CROP for detection tasks: the torchvision engine's training samples are Detectron2 0.6's.

Detectron2's DatasetMapper crops first (RandomCrop before ResizeShortestEdge and the flip), cuts
polygons to the window with shapely (a polygon may vanish or split, and only each piece's outer
boundary is kept), crops RLE masks as arrays, hides keypoints outside the image, recomputes the
boxes from the masks when MASK_ON and drops empty instances. The `detectron2`-marked tests build
the same sample with both pipelines on synthetic COCO data (polygons with holes, RLE masks,
keypoints), both engines' random draws forced to the same crop windows, flips and sizes; they
need detectron2 and shapely. The default tests check a cropped sample's consistency and that with
crops off the samples are those of the code before crops existed (digests recorded from it).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torch import Tensor

from detco_bench.engines.torchvision.data.crop import crop_polygons
from detco_bench.engines.torchvision.data.datasets import TrainDataset
from detco_bench.engines.torchvision.data.images import annotation_mask
from detco_bench.engines.torchvision.data.polygons import unpack_polygons
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record
from detco_bench.engines.torchvision.settings import Settings
from detco_bench.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

DATASETS = "detco_bench.engines.torchvision.data.datasets"
KEYPOINTS = ["top", "right", "bottom", "left"]
#: Synthetic images (H, W).
IMAGE_SIZE = (128, 192)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The synthetic COCO set: image paths and, per image, its annotations with keypoints."""
    root = tmp_path_factory.mktemp("detection_crop")
    write_synthetic_dataset(root, "coco", num_train=6, num_val=1, seed=0, image_size=IMAGE_SIZE, force=True)
    data = json.loads((root / "coco" / "annotations" / "person_keypoints_train2017.json").read_text())
    classes = json.loads((root / "coco" / "annotations" / "instances_train2017.json").read_text())
    category = {a["id"]: a["category_id"] - 1 for a in classes["annotations"]}
    images = {im["id"]: str(root / "coco" / "train2017" / im["file_name"]) for im in data["images"]}
    anns: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for a in data["annotations"]:
        anns[a["image_id"]].append({**a, "category": category[a["id"]]})
    return {"images": images, "annotations": anns}


def engine_record(coco: dict[str, Any], image_id: int, rle: bool) -> Record:
    """An image as the engine's records hold it (XYXY boxes, contiguous categories; keypoints at
    pixel centres as Detectron2's COCO loader puts them); `rle`: masks as compressed RLE."""
    h, w = IMAGE_SIZE
    anns = []
    for a in coco["annotations"][image_id]:
        x, y, bw, bh = a["bbox"]
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, :2] += 0.5
        segm: Any = a["segmentation"]
        if rle:
            encoded = mask_util.encode(np.asfortranarray(annotation_mask(segm, h, w)))
            segm = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
        anns.append(
            {
                "bbox": [x, y, x + bw, y + bh], "category": a["category"], "segmentation": segm,
                "keypoints": kp.reshape(-1).tolist(), "iscrowd": 0,
            }
        )  # fmt: skip
    return {"file_name": coco["images"][image_id], "height": h, "width": w, "annotations": anns}


def engine_dataset(records: list[Record], case: dict[str, Any]) -> TrainDataset:
    settings = Settings(
        {
            "INPUT": {
                "FORMAT": "BGR", "MIN_SIZE_TRAIN": [case["min_size"]], "MIN_SIZE_TRAIN_SAMPLING": "choice",
                "MAX_SIZE_TRAIN": case["max_size"], "RANDOM_FLIP": case["flip"], "MASK_FORMAT": case["mask_format"],
                "CROP": {"ENABLED": case["crop"] is not None, "TYPE": (case["crop"] or ("relative", 0))[0],
                         "SIZE": list((case["crop"] or ("", [1.0, 1.0]))[1])},
            }
        }
    )  # fmt: skip
    meta = DatasetMeta(["circle", "square", "triangle", "ring"], keypoint_names=KEYPOINTS, keypoint_flip=[0, 3, 2, 1])
    return TrainDataset(
        records, settings, meta, task="detection", label_offset=0, mask_on=case["mask_on"],
        keypoint_on=case["keypoint_on"],
    )


@contextlib.contextmanager
def forced(case: dict[str, Any]) -> Iterator[None]:
    """Both engines' draws forced to the case's: the crop size uniforms (relative_range), the crop
    offsets as fractions of their ranges (top, then left), and the flip. The torchvision engine
    draws with `_uniform` / `_randint` (inclusive), Detectron2's RandomCrop with ``np.random.rand``
    / ``np.random.randint`` and RandomFlip with its ``_rand_range``."""
    from detectron2.data.transforms import RandomFlip

    uniforms = list(case.get("uniforms", ())) + ([0.0 if case["flipped"] else 0.9] if case["flip"] != "none" else [])
    engine_u, d2_u = iter(uniforms), iter(case.get("uniforms", ()))
    engine_f, d2_f = iter(case.get("offsets", ())), iter(case.get("offsets", ()))

    def pick(fractions: Iterator[float], low: int, high: int) -> int:
        return low if low == high else low + round(next(fractions) * (high - low))

    patches = {
        f"{DATASETS}._uniform": lambda g: next(engine_u),
        f"{DATASETS}._randint": lambda g, low, high: pick(engine_f, low, high),
        "numpy.random.rand": lambda n: np.array([next(d2_u) for _ in range(n)]),
        "numpy.random.randint": lambda low, high=None: (
            pick(d2_f, 0, low - 1) if high is None else pick(d2_f, low, high - 1)
        ),
    }
    with contextlib.ExitStack() as stack:
        for target, fn in patches.items():
            stack.enter_context(mock.patch(target, side_effect=fn))
        stack.enter_context(mock.patch.object(RandomFlip, "_rand_range", return_value=0.0 if case["flipped"] else 0.9))
        yield


def detectron2_sample(record: Record, case: dict[str, Any]) -> dict[str, Any]:
    """Detectron2's DatasetMapper (built from a config, as its trainer builds it) on `record`."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper, MetadataCatalog
    from detectron2.structures import BoxMode

    name = "detco_crop_test"
    if not hasattr(MetadataCatalog.get(name), "keypoint_names"):
        MetadataCatalog.get(name).set(keypoint_names=KEYPOINTS, keypoint_flip_map=[("right", "left")])
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (case["min_size"],)
    cfg.INPUT.MAX_SIZE_TRAIN = case["max_size"]
    cfg.INPUT.RANDOM_FLIP = case["flip"]
    cfg.INPUT.MASK_FORMAT = case["mask_format"]
    cfg.MODEL.MASK_ON = case["mask_on"]
    cfg.MODEL.KEYPOINT_ON = case["keypoint_on"]
    if case["crop"] is not None:
        cfg.INPUT.CROP.ENABLED = True
        cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = case["crop"][0], list(case["crop"][1])
    mapper = DatasetMapper(cfg, is_train=True)
    d = copy.deepcopy(record)
    d["annotations"] = [
        {**a, "bbox_mode": BoxMode.XYXY_ABS, "category_id": a["category"]} for a in d["annotations"]
    ]
    return mapper(d)


#: Each case: the data (polygons or RLE), the masks' format, heads, the crop (type, size) and the
#: forced draws, sizes and flip. The windows cut instances, drop some and split rings (their
#: concave polygons), fill the holes of rings wholly inside; "resized" crops are resized up.
CASES: dict[str, dict[str, Any]] = {
    "polygon-keypoints": dict(rle=False, mask_format="polygon", mask_on=True, keypoint_on=True,
                              crop=("relative_range", (0.3, 0.3)), uniforms=(0.2, 0.4), offsets=(0.5, 0.6),
                              min_size=0, max_size=1333, flip="none", flipped=False),
    "polygon-flipped": dict(rle=False, mask_format="polygon", mask_on=True, keypoint_on=True,
                            crop=("absolute", (64, 96)), offsets=(0.3, 0.7), min_size=0, max_size=1333,
                            flip="horizontal", flipped=True),
    "polygon-resized": dict(rle=False, mask_format="polygon", mask_on=True, keypoint_on=True,
                            crop=("absolute_range", (40, 100)), offsets=(0.6, 0.6, 0.2, 0.3), min_size=96,
                            max_size=400, flip="horizontal", flipped=True),
    "polygon-as-bitmask": dict(rle=False, mask_format="bitmask", mask_on=True, keypoint_on=False,
                               crop=("relative", (0.5, 0.5)), offsets=(0.6, 0.4), min_size=0, max_size=1333,
                               flip="none", flipped=False),
    "rle": dict(rle=True, mask_format="bitmask", mask_on=True, keypoint_on=True,
                crop=("relative_range", (0.3, 0.3)), uniforms=(0.2, 0.4), offsets=(0.5, 0.6), min_size=0,
                max_size=1333, flip="horizontal", flipped=True),
    "rle-resized": dict(rle=True, mask_format="bitmask", mask_on=True, keypoint_on=False,
                        crop=("absolute", (50, 70)), offsets=(0.4, 0.5), min_size=100, max_size=400, flip="none",
                        flipped=False),
    "boxes-keypoints": dict(rle=False, mask_format="polygon", mask_on=False, keypoint_on=True,
                            crop=("relative", (0.5, 0.5)), offsets=(0.6, 0.4), min_size=0, max_size=1333,
                            flip="horizontal", flipped=True),
}  # fmt: skip


def image_ids(coco: dict[str, Any]) -> list[int]:
    return [i for i, anns in coco["annotations"].items() if anns]


def polygon_raster(polygons: list[np.ndarray] | None, h: int, w: int) -> np.ndarray:
    if not polygons:
        return np.zeros((h, w), dtype=np.uint8)
    return annotation_mask([np.asarray(p, dtype=np.float64).tolist() for p in polygons], h, w)


@pytest.mark.detectron2
@pytest.mark.parametrize("name", list(CASES))
def test_cropped_sample_is_detectron2s(coco: dict[str, Any], name: str) -> None:
    """Image, boxes, classes, masks (and the packed polygons' rasters), keypoints and their
    visibility equal Detectron2's for each image of the synthetic set; over the set the window
    cuts instances, drops some, and (polygon cases) splits a polygon into several."""
    pytest.importorskip("shapely")
    from detectron2.structures import BitMasks, PolygonMasks

    case = CASES[name]
    dropped = split = 0
    for image_id in image_ids(coco):
        record = engine_record(coco, image_id, case["rle"])
        with forced(case):
            image, target = engine_dataset([record], case)[(0, 0)]
        with forced(case):
            theirs = detectron2_sample(record, case)
        assert image.shape == theirs["image"].shape
        ours_uint8 = (image * 255).round().to(torch.uint8)
        tolerance = 1 if case["min_size"] else 0  # antialiased resize vs PIL's bilinear
        assert int((ours_uint8.int() - theirs["image"].int()).abs().max()) <= tolerance
        instances = theirs["instances"]
        h, w = image.shape[-2:]
        assert torch.allclose(target["boxes"], instances.gt_boxes.tensor, atol=1e-4), name
        assert torch.equal(target["labels"], instances.gt_classes)
        dropped += len(record["annotations"]) - len(instances)
        if case["keypoint_on"]:
            assert torch.allclose(target["keypoints"], instances.gt_keypoints.tensor.float(), atol=1e-4)
        if not case["mask_on"]:
            continue
        masks = instances.gt_masks
        if isinstance(masks, PolygonMasks):
            split += sum(len(p) > 1 for p in masks.polygons)
            ours = unpack_polygons(target, len(instances))
            for mine, theirs_polys in zip(ours, masks.polygons, strict=True):
                assert np.array_equal(polygon_raster(mine, h, w), polygon_raster(theirs_polys, h, w))
            masks = BitMasks.from_polygon_masks(masks, h, w)
        assert torch.equal(target["masks"].bool(), masks.tensor)
    assert dropped > 0, "no window dropped an instance"
    if case["mask_format"] == "polygon" and case["mask_on"]:
        assert split > 0, "no instance with several polygons (a split)"


@pytest.mark.detectron2
def test_polygon_clipping_is_shapelys(coco: dict[str, Any]) -> None:
    """`crop_polygons` against fvcore's shapely crop (which Detectron2 0.6 runs) on 1500 random
    windows over the synthetic polygons (rings with keyhole slits, occluded shapes) and 1500 over
    random concave float polygons: the same rasters and the same extents."""
    shapely_geometry = pytest.importorskip("shapely.geometry")
    from fvcore.transforms.transform import CropTransform

    def theirs(polygons: list[np.ndarray], window: tuple[int, int, int, int]) -> list[np.ndarray]:
        x0, y0, x1, y1 = window
        pieces = CropTransform(x0, y0, x1 - x0, y1 - y0).apply_polygons([p.reshape(-1, 2) for p in polygons])
        return [p.reshape(-1) for p in pieces]

    rng = np.random.default_rng(0)
    synthetic = [a["segmentation"] for anns in coco["annotations"].values() for a in anns]
    cases = []
    for k in range(3000):
        if k < 1500:
            polygons = [np.asarray(p, dtype=np.int64) for p in synthetic[int(rng.integers(len(synthetic)))]]
        else:
            n = int(rng.integers(5, 14))
            angles, radii = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(5, 40, n)
            cx, cy = rng.uniform(20, 80, 2)
            xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            polygons = [xy[:: 1 if k % 2 else -1].reshape(-1)]
        x0, y0 = (int(v) for v in rng.integers(0, 100, 2))
        window = (x0, y0, x0 + int(rng.integers(1, 80)), y0 + int(rng.integers(1, 80)))
        cases.append((polygons, window))
    splits = 0
    for k, (polygons, window) in enumerate(cases):
        if k >= 1500 and not shapely_geometry.Polygon(polygons[0].reshape(-1, 2)).is_valid:  # self-intersecting
            continue
        mine, ref = crop_polygons(polygons, window), theirs([p.copy() for p in polygons], window)
        splits += len(ref) > len(polygons)
        h, w = window[3] - window[1], window[2] - window[0]
        assert np.array_equal(polygon_raster(mine, h, w), polygon_raster(ref, h, w)), window
        assert bool(mine) == bool(ref)
        if ref:
            ext = [np.concatenate([p.reshape(-1, 2) for p in ps]) for ps in (mine, ref)]
            assert np.allclose(ext[0].min(0), ext[1].min(0), atol=1e-9)
            assert np.allclose(ext[0].max(0), ext[1].max(0), atol=1e-9)
    assert splits > 10


@pytest.mark.detectron2
def test_an_rle_mask_the_resize_loses_is_dropped_as_by_detectron2(coco: dict[str, Any]) -> None:
    """Without a crop too, Detectron2's filter_empty_instances drops an instance whose bitmask is
    empty after the resize (a one-pixel RLE mask between the samples of a 4x downscale)."""
    case = dict(rle=True, mask_format="bitmask", mask_on=True, keypoint_on=False, crop=None, min_size=32,
                max_size=1333, flip="none", flipped=False)
    record = engine_record(coco, image_ids(coco)[0], rle=True)
    dot = np.zeros(IMAGE_SIZE, dtype=np.uint8)
    dot[5, 7] = 1  # PIL's nearest samples rows / columns 2, 6, 10, ... at 1/4 scale
    encoded = mask_util.encode(np.asfortranarray(dot))
    rle = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
    record["annotations"].append({"bbox": [7.0, 5.0, 8.0, 6.0], "category": 0, "iscrowd": 0, "segmentation": rle,
                                  "keypoints": [0.0] * 3 * len(KEYPOINTS)})
    with forced(case):
        image, target = engine_dataset([record], case)[(0, 0)]
    with forced(case):
        theirs = detectron2_sample(record, case)["instances"]
    assert len(theirs) == len(target["boxes"]) == len(record["annotations"]) - 1
    assert torch.allclose(target["boxes"], theirs.gt_boxes.tensor, atol=1e-4)
    assert torch.equal(target["labels"], theirs.gt_classes)
    assert torch.equal(target["masks"].bool(), theirs.gt_masks.tensor)


# --------------------------------------------------------------------------------------------
# Default suite


def test_cropped_sample_is_consistent(coco: dict[str, Any]) -> None:
    """A cropped sample: boxes inside the image, no empty instance, each box the extent of its
    mask (polygon extents, a pixel at most from the raster's), keypoints hidden outside."""
    for name in ("polygon-keypoints", "polygon-resized", "rle"):
        case = CASES[name]
        for seed in range(3):
            for image_id in image_ids(coco):
                dataset = engine_dataset([engine_record(coco, image_id, case["rle"])], case)
                image, target = dataset[(0, seed)]
                h, w = image.shape[-2:]
                boxes = target["boxes"]
                assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
                assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
                masks = target["masks"].bool()
                assert masks.shape == (len(boxes), h, w) and masks.flatten(1).any(1).all()
                for box, mask in zip(boxes.tolist(), masks, strict=True):
                    ys, xs = torch.where(mask)
                    extent = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
                    assert np.allclose(box, extent, atol=1.0), (box, extent)
                kp = target["keypoints"]
                hidden = kp[..., 2] == 0
                assert (kp[hidden][:, :2] == 0).all()
                assert (kp[~hidden][:, 0] <= w).all() and (kp[~hidden][:, 1] <= h).all()


def sample_digest(sample: tuple[Tensor, dict[str, Tensor]]) -> str:
    image, target = sample
    h = hashlib.sha256((image * 255).round().to(torch.uint8).numpy().tobytes())
    for key in sorted(target):
        h.update(key.encode())
        h.update(target[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


#: sha256 digests of samples with INPUT.CROP off (image 1 of the synthetic set, seeds 0-2),
#: recorded from the engine before it cropped detection samples (commit 71ae838).
UNCROPPED_DIGESTS: dict[str, list[str]] = {
    "polygon-resized": ["7de671372cf3dff4", "6ad7d699203a7fe8", "6ad7d699203a7fe8"],
    "rle": ["24b0f348f561e2eb", "348d170fae1293ba", "348d170fae1293ba"],
    "boxes-keypoints": ["3e2bf839c02c2bc9", "f98cb69e00069f97", "f98cb69e00069f97"],
}


@pytest.mark.parametrize("name", ["polygon-resized", "rle", "boxes-keypoints"])
def test_uncropped_samples_unchanged(coco: dict[str, Any], name: str) -> None:
    """With INPUT.CROP off, samples (and so the draws) are byte for byte those of the code before."""
    case = {**CASES[name], "crop": None}
    dataset = engine_dataset([engine_record(coco, image_ids(coco)[0], case["rle"])], case)
    digests = [sample_digest(dataset[(0, seed)]) for seed in range(3)]
    assert digests == UNCROPPED_DIGESTS[name]
