"""The torchvision engine's training targets and losses are Detectron2's: mask targets per RoI
(polygons rasterised in the box, or the bitmask RoIAligned with aligned=True and >= 0.5), keypoint
RoIs with a visible keypoint inside, and RetinaNet's loss normalised by an EMA of the foreground
count. Hand-computed cases run in the default suite; the `detectron2`-marked tests compare with
detectron2's own functions on the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

SQUARE = [np.array([10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0])]  # the square [10, 30) x [10, 30)


def square_bitmask() -> torch.Tensor:
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:30, 10:30] = 1
    return mask


def random_instances(rng: np.random.Generator, n: int, h: int, w: int) -> list[list[np.ndarray]]:
    """n instances of 1-2 random (non-convex) polygons each, partly outside the image."""
    out = []
    for _ in range(n):
        polys = []
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            k = int(rng.integers(3, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            radii = rng.uniform(3, 25, k)
            xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
            polys.append(xy.reshape(-1))
        out.append(polys)
    return out


def random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """n float32 boxes, some tiny (side < 0.1) and some crossing the image border."""
    x0 = rng.uniform(-5, w - 5, n)
    y0 = rng.uniform(-5, h - 5, n)
    bw = np.where(rng.random(n) < 0.1, rng.uniform(0.01, 0.09, n), rng.uniform(2, 40, n))
    bh = rng.uniform(2, 40, n)
    return torch.tensor(np.stack([x0, y0, x0 + bw, y0 + bh], axis=1), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Masks


def test_polygon_and_bitmask_targets_hand_computed() -> None:
    """The square [10, 30)^2 in a 40x40 image, RoI [0, 0, 40, 40] at M = 4: each bin is 10 px, so the
    target is the centre 2x2, binary, from the polygon and from the bitmask alike; the RoI equal
    to the square gives all ones."""
    from detco_bench.engines.torchvision.models.mask_targets import bitmask_in_boxes, polygon_mask_in_box

    centre = np.zeros((4, 4), dtype=bool)
    centre[1:3, 1:3] = True
    whole = np.array([0, 0, 40, 40], dtype=np.float32)
    assert np.array_equal(polygon_mask_in_box(SQUARE, whole, 4), centre)
    assert polygon_mask_in_box(SQUARE, np.array([10, 10, 30, 30], dtype=np.float32), 4).all()
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]])
    bits = bitmask_in_boxes(square_bitmask(), torch.tensor([0, 0]), boxes, 4)
    assert bits.dtype == torch.bool
    assert np.array_equal(bits[0].numpy(), centre) and bool(bits[1].all())


def test_mask_loss_uses_polygons_when_present_and_bitmasks_otherwise() -> None:
    """Two GT instances, the first with polygons, the second an RLE-style bitmask only; an RoI on
    each. The loss is the BCE of the GT-class channel against the binary targets."""
    from detco_bench.engines.torchvision.data.polygons import pack_polygons, unpack_polygons
    from detco_bench.engines.torchvision.models.mask_targets import mask_loss, mask_targets

    masks = torch.cat([square_bitmask(), torch.zeros(1, 40, 40, dtype=torch.uint8)])
    masks[1, :20, :20] = 1
    target: dict[str, Any] = {"masks": masks, "labels": torch.tensor([2, 1]), **pack_polygons([SQUARE, None])}
    back = unpack_polygons(target, 2)
    assert back[1] is None and np.array_equal(back[0][0], SQUARE[0])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 40.0]])
    matched = torch.tensor([0, 1])
    gt = mask_targets(target, matched, boxes, 4)
    assert gt[0, 1:3, 1:3].all() and gt[0].sum() == 4  # the polygon
    assert gt[1, :2, :2].all() and gt[1].sum() == 4  # the bitmask's top-left quarter
    logits = torch.randn(2, 3, 4, 4)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[[0, 1], [2, 1]], gt.float())
    assert torch.allclose(mask_loss(logits, [boxes], [target], [matched]), expected)
    empty = mask_loss(logits[:0], [boxes[:0]], [target], [matched[:0]])
    assert empty.item() == 0.0


def test_training_polygons_move_with_the_boxes(tmp_path: Path) -> None:
    """Resize + flip: the packed polygons of every instance span exactly its (transformed) box, and
    rasterised at the image size they are the full-image mask."""
    from detco_bench.datasets import DatasetSpec
    from detco_bench.engines.torchvision.data.coco import load_coco
    from detco_bench.engines.torchvision.data.datasets import TrainDataset
    from detco_bench.engines.torchvision.data.images import annotation_mask
    from detco_bench.engines.torchvision.data.polygons import unpack_polygons
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, "coco", num_train=2, num_val=1, seed=0, image_size=(96, 128))
    coco = tmp_path / "coco"
    spec = DatasetSpec(
        name="t", kind="coco", split="train", image_root=str(coco / "train2017"),
        json_file=str(coco / "annotations" / "instances_train2017.json"),
    )  # fmt: skip
    settings = Settings({"INPUT": {"MIN_SIZE_TRAIN": [150], "MAX_SIZE_TRAIN": 400}})
    records, meta = load_coco(spec, settings, keypoints=False)
    ds = TrainDataset(records, settings, meta, task="detection", mask_on=True)
    flips = set()
    for seed in range(6):
        image, target = ds[(0, seed)]
        h, w = image.shape[-2:]
        polygons = unpack_polygons(target, len(target["boxes"]))
        for polys, box, mask in zip(polygons, target["boxes"], target["masks"], strict=True):
            xs = np.concatenate([p[0::2] for p in polys])
            ys = np.concatenate([p[1::2] for p in polys])
            # the synthetic polygons are integers: resized, they are truncated (as Detectron2 moves
            # integer coordinates), so they span the exactly scaled box to within a pixel
            assert all(float(np.asarray(p).astype(np.int64).sum()) == float(np.asarray(p).sum()) for p in polys)
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max(), ys.max()], box.numpy(), atol=1.0)
            assert np.array_equal(annotation_mask(polys, h, w), mask.numpy())
        flips.add(round(float(target["boxes"][0, 0]), 3))
    assert len(flips) == 2  # flipped and unflipped samples seen


def test_bitmask_format_packs_no_polygons() -> None:
    from detco_bench.engines.torchvision.data.datasets import TrainDataset
    from detco_bench.engines.torchvision.data.records import DatasetMeta
    from detco_bench.engines.torchvision.settings import Settings

    ds = TrainDataset([], Settings({"INPUT": {"MASK_FORMAT": "bitmask"}}), DatasetMeta(["a"]), task="detection")
    anns = [{"segmentation": [list(SQUARE[0])]}]
    out = ds._pack_masks(*ds._moved_masks(anns, (40, 40), (80, 80), "horizontal"), (80, 80))
    assert set(out) == {"masks"} and out["masks"].shape == (1, 80, 80) and out["masks"].sum() == 40 * 40
    with pytest.raises(ValueError, match="MASK_FORMAT"):
        TrainDataset([], Settings({"INPUT": {"MASK_FORMAT": "rle"}}), DatasetMeta(["a"]), task="detection")


@pytest.mark.detectron2
def test_mask_targets_equal_detectron2() -> None:
    """PolygonMasks.crop_and_resize and BitMasks.crop_and_resize on random polygons and boxes
    (tiny, border-crossing) give exactly our targets."""
    from detectron2.structures import BitMasks, PolygonMasks

    from detco_bench.engines.torchvision.models.mask_targets import bitmask_in_boxes, polygon_mask_in_box

    rng = np.random.default_rng(0)
    h, w, n = 60, 80, 64
    instances = random_instances(rng, n, h, w)
    boxes = random_boxes(rng, n, h, w)
    for size in (14, 28):
        theirs = PolygonMasks(instances).crop_and_resize(boxes, size)
        mine = np.stack([polygon_mask_in_box(p, b, size) for p, b in zip(instances, boxes.numpy(), strict=True)])
        assert np.array_equal(theirs.numpy(), mine)
        bitmasks = PolygonMasks(instances)
        full = torch.from_numpy(np.stack([_raster(p, h, w) for p in bitmasks.polygons]))
        theirs = BitMasks(full).crop_and_resize(boxes, size)
        assert torch.equal(theirs, bitmask_in_boxes(full, torch.arange(n), boxes, size))
        # RoIs sharing a GT mask (the GT index as batch index) give the same as one copy per RoI
        shared = bitmask_in_boxes(full[:1], torch.zeros(n, dtype=torch.int64), boxes, size)
        assert torch.equal(BitMasks(full[:1].expand(n, h, w)).crop_and_resize(boxes, size), shared)


def _raster(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    from detco_bench.engines.torchvision.data.images import annotation_mask

    return annotation_mask(polys, h, w)


# --------------------------------------------------------------------------------------------
# Keypoint RoIs


def keypoint_case() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """GT 0: a visible keypoint at (5, 5); GT 1: only an unlabeled one (v=0) at (5, 5) and a hidden
    one (v=1) at (50, 50). Proposals: [0,0,10,10]->GT0 (kept), [5,5,9,9]->GT0 (the point on the
    border: kept), [6,6,9,9]->GT0 (outside: dropped), [0,0,10,10]->GT1 (v=0 inside: dropped),
    [40,40,60,60]->GT1 (v=1 inside: kept). A second image without proposals."""
    kps = torch.tensor([[[5.0, 5.0, 2.0], [0.0, 0.0, 0.0]], [[5.0, 5.0, 0.0], [50.0, 50.0, 1.0]]])
    props = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 9.0], [6.0, 6.0, 9.0, 9.0], [0.0, 0.0, 10.0, 10.0], [40.0, 40, 60, 60]]
    )
    matched = torch.tensor([0, 0, 0, 1, 1])
    return [props, props[:0]], [matched, matched[:0]], [kps, kps]


def test_keypoint_rois_need_a_visible_keypoint_inside() -> None:
    from detco_bench.engines.torchvision.models.roi_heads import visible_keypoint_proposals

    props, matched, kps = keypoint_case()
    kept, kept_matched = visible_keypoint_proposals(props, matched, kps)
    assert torch.equal(kept[0], props[0][[0, 1, 4]]) and kept_matched[0].tolist() == [0, 0, 1]
    assert kept[1].shape == (0, 4) and kept_matched[1].numel() == 0


@pytest.mark.detectron2
def test_keypoint_rois_equal_detectron2() -> None:
    from detectron2.modeling.roi_heads.roi_heads import select_proposals_with_visible_keypoints
    from detectron2.structures import Boxes, Instances, Keypoints
    from detectron2.utils.events import EventStorage

    from detco_bench.engines.torchvision.models.roi_heads import visible_keypoint_proposals

    props, matched, kps = keypoint_case()
    instances = []
    for p, m, k in zip(props, matched, kps, strict=True):
        inst = Instances((100, 100), proposal_boxes=Boxes(p))
        inst.gt_keypoints = Keypoints(k[m])
        instances.append(inst)
    with EventStorage():
        theirs = select_proposals_with_visible_keypoints(instances)
    mine, _ = visible_keypoint_proposals(props, matched, kps)
    for t, m in zip(theirs, mine, strict=True):
        assert torch.equal(t.proposal_boxes.tensor, m)


# --------------------------------------------------------------------------------------------
# RetinaNet loss


def retinanet(num_classes: int = 3) -> Any:
    from detco_bench.engines.torchvision.models.build import build_model
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.transfer_config import effective_config, set_key

    cfg = effective_config("retinanet_12k")
    set_key(cfg, "MODEL.RESNETS.NORM", "BN")
    set_key(cfg, "MODEL.FPN.OUT_CHANNELS", 32)
    set_key(cfg, "MODEL.RETINANET.NUM_CLASSES", num_classes)
    return build_model("retinanet", Settings(cfg), "resnet18", None, num_classes=num_classes)


def test_retinanet_loss_normaliser_is_an_ema_of_the_batch_foreground() -> None:
    """Anchors: two overlapping the GT box of image 0 (IoU 1 and 100/105), one of image 1's GT, and
    far ones; so the batch has 3 foreground anchors: the normaliser goes 100 -> 90.3 -> 81.57 (and
    max(0, 1) = 1 for a batch without boxes), and rank_state round-trips it."""
    model = retinanet()
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5], [50.0, 50.0, 60.0, 60.0], [200.0, 200.0, 210.0, 210.0]]
    )
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[50.0, 50.0, 60.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    outputs = {"cls_logits": torch.zeros(2, 4, 3), "bbox_regression": torch.zeros(2, 4, 4)}
    assert model.loss_normalizer == 100.0
    losses = model.compute_loss(targets, outputs, [anchors, anchors])
    assert model.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * 3)
    model.compute_loss(targets, outputs, [anchors, anchors])
    assert model.loss_normalizer == pytest.approx(0.9 * 90.3 + 0.1 * 3)
    # every anchor is valid (IoU 0 or >= 0.5); logits 0: focal term 0.75 * 0.25 * ln 2 for negatives,
    # 0.25 * 0.25 * ln 2 for the positive class of a foreground anchor
    per_neg, per_pos = 0.75 * 0.25 * np.log(2), 0.25 * 0.25 * np.log(2)
    total = 3 * per_pos + (2 * 4 * 3 - 3) * per_neg
    assert losses["classification"].item() == pytest.approx(total / 90.3, rel=1e-5)
    assert losses["bbox_regression"].item() > 0  # the anchor [0, 0, 10, 10.5] needs a nonzero delta
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    model.compute_loss(empty, outputs, [anchors, anchors])
    assert model.loss_normalizer == pytest.approx(0.9 * (0.9 * 90.3 + 0.3) + 0.1)
    state = model.rank_state()
    other = retinanet()
    other.load_rank_state(state)
    assert other.loss_normalizer == model.loss_normalizer


@pytest.mark.detectron2
def test_retinanet_losses_equal_detectron2(tmp_path: Path) -> None:
    """detectron2's RetinaNet (built from the same task config) labels the same anchors and gives the
    same losses and normaliser over three batches of random predictions and boxes."""
    from detectron2.modeling import build_model as d2_build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage
    from torchvision.models.detection.image_list import ImageList

    from detco_bench.engines.detectron2.config import build_cfg
    from detco_bench.transfer import plan_transfer

    plan = plan_transfer(
        "retinanet_12k", None, tmp_path / "o", engine="detectron2", device="cpu", data_root_dir=tmp_path,
        opts=["MODEL.RETINANET.NUM_CLASSES", "3"],
    )  # fmt: skip
    d2 = d2_build_model(build_cfg(plan))
    ours = retinanet()
    g = torch.Generator().manual_seed(0)
    maps = [torch.zeros(1, 1, 160 // s, 224 // s) for s in (8, 16, 32, 64, 128)]
    anchors = ours.anchor_generator(ImageList(torch.zeros(2, 3, 160, 224), [(160, 224)] * 2), maps)
    d2_anchors = d2.anchor_generator(maps)
    assert torch.equal(torch.cat([b.tensor for b in d2_anchors]), anchors[0])
    r = anchors[0].shape[0]
    with EventStorage():
        for step in range(3):
            targets, instances = [], []
            for _ in range(2):
                n = int(torch.randint(0 if step == 2 else 1, 5, (), generator=g))
                xy = torch.rand(n, 2, generator=g) * torch.tensor([180.0, 120.0])
                wh = 8 + torch.rand(n, 2, generator=g) * 90
                boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([224.0, 160.0]))], dim=1)
                labels = torch.randint(0, 3, (n,), generator=g)
                targets.append({"boxes": boxes, "labels": labels})
                instances.append(Instances((160, 224), gt_boxes=Boxes(boxes), gt_classes=labels))
            logits = torch.randn(2, r, 3, generator=g)
            deltas = torch.randn(2, r, 4, generator=g) * 0.1
            mine = ours.compute_loss(targets, {"cls_logits": logits, "bbox_regression": deltas}, anchors)
            gt_labels, gt_boxes = d2.label_anchors(d2_anchors, instances)
            theirs = d2.losses(d2_anchors, [logits], gt_labels, [deltas], gt_boxes)
            assert ours.loss_normalizer == pytest.approx(d2.loss_normalizer, rel=1e-12)
            assert mine["classification"].item() == pytest.approx(theirs["loss_cls"].item(), rel=1e-5)
            assert mine["bbox_regression"].item() == pytest.approx(theirs["loss_box_reg"].item(), rel=1e-5)
