"""The torchvision engine pastes predicted masks as Detectron2 does (bilinear samples at pixel
centres of the box) and maps detections back to the input image with detector_postprocess's clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_paste_fills_exactly_the_box_pixels() -> None:
    """An all-ones 4x4 mask in the box [10, 10, 20, 15] covers pixel columns 10..19 and rows 10..14
    (their centres lie inside the box); beyond a box edge the samples fall below 0.5."""
    from detco_bench.engines.torchvision.models.mask_paste import paste_masks

    masks = torch.ones(2, 1, 4, 4)
    boxes = torch.tensor([[10.0, 10.0, 20.0, 15.0], [0.0, 0.0, 5.4, 3.4]])
    out = paste_masks(masks, boxes, (30, 40)) >= 0.5
    expected = np.zeros((30, 40), bool)
    expected[10:15, 10:20] = True
    assert np.array_equal(out[0, 0].numpy(), expected)
    assert out[1, 0, :3, :5].all() and out[1, 0].sum() == 3 * 5  # centres 5.5 and 3.5 lie outside
    assert paste_masks(masks[:0], boxes[:0], (30, 40)).shape == (0, 1, 30, 40)


def test_postprocess_clips_boxes_and_pastes_at_the_input_size() -> None:
    from detco_bench.engines.torchvision.models.transform import D2Transform

    t = D2Transform(64, 100, [0.0] * 3, [1.0] * 3, 32).eval()
    result = [
        {
            "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [60.0, 10.0, 70.0, 20.0], [70.0, 1.0, 80.0, 2.0]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([1, 2, 1]),
            "masks": torch.ones(3, 1, 4, 4),
        }
    ]
    out = t.postprocess(result, [(64, 64)], [(32, 32)])[0]
    # scaled by 1/2 and clipped to 32x32: the third box becomes empty and is dropped
    assert out["boxes"].tolist() == [[2.0, 2.0, 10.0, 10.0], [30.0, 5.0, 32.0, 10.0]]
    assert out["labels"].tolist() == [1, 2] and out["masks"].shape == (2, 1, 32, 32)
    assert (out["masks"][0, 0] >= 0.5).sum() == 64


@pytest.mark.detectron2
def test_paste_equals_detectron2() -> None:
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    from detco_bench.engines.torchvision.models.mask_paste import paste_masks

    g = torch.Generator().manual_seed(0)
    n, h, w = 50, 70, 90
    masks = torch.rand(n, 1, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 5.0, h - 5.0]) - 3
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 40], dim=1)
    theirs = paste_masks_in_image(masks[:, 0], Boxes(boxes), (h, w), threshold=0.5)
    assert torch.equal(theirs, paste_masks(masks, boxes, (h, w))[:, 0] >= 0.5)


@pytest.mark.detectron2
def test_retinanet_detections_equal_detectron2(tmp_path) -> None:
    """RetinaNet's per-level top-k, decoding and NMS on random head outputs: the same detections as
    detectron2's inference_single_image, boxes unclipped (both clip after NMS)."""
    from detectron2.modeling import build_model as d2_build_model
    from detectron2.structures import Boxes
    from torchvision.models.detection.image_list import ImageList

    from detco_bench.engines.detectron2.config import build_cfg
    from detco_bench.engines.torchvision.models.build import build_model
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.transfer import plan_transfer
    from detco_bench.transfer_config import set_key

    plan = plan_transfer(
        "retinanet_12k", None, tmp_path / "o", engine="detectron2", device="cpu", data_root_dir=tmp_path,
        opts=["MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.RESNETS.NORM", "BN"],
    )  # fmt: skip
    d2 = d2_build_model(build_cfg(plan)).eval()
    set_key(plan.config, "MODEL.FPN.OUT_CHANNELS", 32)
    ours = build_model("retinanet", Settings(plan.config), "resnet18", None, num_classes=3).eval()
    g = torch.Generator().manual_seed(0)
    h, w = 96, 160
    maps = [torch.zeros(1, 1, h // s, w // s) for s in (8, 16, 32, 64, 128)]
    anchors = ours.anchor_generator(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), maps)[0]
    per_level = [m.shape[-2] * m.shape[-1] * 9 for m in maps]
    logits = (torch.randn(1, anchors.shape[0], 3, generator=g) - 2).split(per_level, dim=1)
    deltas = (torch.randn(1, anchors.shape[0], 4, generator=g) * 0.3).split(per_level, dim=1)
    level_anchors = list(anchors.split(per_level))
    mine = ours.postprocess_detections(
        {"cls_logits": list(logits), "bbox_regression": list(deltas)}, [level_anchors], [(h, w)]
    )[0]
    theirs = d2.inference_single_image(
        [Boxes(a) for a in level_anchors], [x[0].sigmoid() for x in logits], [x[0] for x in deltas], (h, w)
    )
    assert len(theirs) == len(mine["boxes"]) > 20
    assert torch.equal(theirs.pred_classes, mine["labels"]) and torch.equal(theirs.scores, mine["scores"])
    assert torch.allclose(theirs.pred_boxes.tensor, mine["boxes"], atol=1e-4)
    assert (mine["boxes"][:, 2] > w).any() or (mine["boxes"][:, 0] < 0).any()  # unclipped boxes were compared
