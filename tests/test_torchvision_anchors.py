"""The torchvision engine's anchors are Detectron2's (DefaultAnchorGenerator): nominal strides, float
sizes, size-major order, ANCHOR_GENERATOR.OFFSET, on image sides that are not multiples of the
stride, for every family (C4 res4, FPN P2-P6, RetinaNet P3-P7).

The default-suite tests compare with an independent hand computation; the `detectron2`-marked test
compares element for element with the generator detectron2 builds from the same task config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detco_bench.transfer_config import effective_config, set_key

#: family -> (a task of that family, the nominal strides of its anchor levels)
FAMILIES = {
    "c4": ("coco_c4_12k", [16]),
    "fpn": ("coco_fpn_12k", [4, 8, 16, 32, 64]),
    "retinanet": ("retinanet_12k", [8, 16, 32, 64, 128]),
}
#: odd test sizes: 801x1067 (neither side a multiple of 16) and Detectron2's test size 800x1067
SIZES = [(801, 1067), (800, 1067)]


def half(n: int) -> int:
    """Side of a stride-2 conv / pool output (kernel 1, 3 or 7 with 'same' padding)."""
    return (n + 1) // 2


def grid_sizes(family: str, h: int, w: int) -> list[tuple[int, int]]:
    """The feature-map sizes of an h x w image: C4 unpadded (res4 = 4 halvings); FPN / RetinaNet
    padded to a multiple of 32, then P2..P5 exact, P6 (and P7) one more halving each."""
    if family == "c4":
        for _ in range(4):
            h, w = half(h), half(w)
        return [(h, w)]
    h, w = 32 * math.ceil(h / 32), 32 * math.ceil(w / 32)
    strides = FAMILIES[family][1]
    out = [(h // s, w // s) for s in strides if s <= 32]
    while len(out) < len(strides):
        out.append((half(out[-1][0]), half(out[-1][1])))
    return out


def hand_anchors(sizes: list[float], ratios: list[float], stride: int, offset: float, grid: tuple[int, int]) -> Any:
    """Anchors written out loop by loop (numpy, float64): positions row by row, then sizes, then
    ratios; centre ((x + offset) * stride, (y + offset) * stride), width size / sqrt(ratio), height
    size * sqrt(ratio)."""
    rows = []
    for y in range(grid[0]):
        for x in range(grid[1]):
            cx, cy = (x + offset) * stride, (y + offset) * stride
            for size in sizes:
                for ratio in ratios:
                    aw, ah = size / math.sqrt(ratio), size * math.sqrt(ratio)
                    rows.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return np.array(rows)


def config_of(family: str, offset: float | None = None) -> dict[str, Any]:
    cfg = effective_config(FAMILIES[family][0])
    set_key(cfg, "MODEL.RESNETS.NORM", "BN")
    set_key(cfg, "INPUT.MIN_SIZE_TEST", 0)  # no test-time resize: the model sees the odd size itself
    set_key(cfg, "MODEL.FPN.OUT_CHANNELS", 32)
    if offset is not None:
        set_key(cfg, "MODEL.ANCHOR_GENERATOR.OFFSET", offset)
    return cfg


def level_params(cfg: dict[str, Any], levels: int) -> tuple[list[list[float]], list[list[float]]]:
    sizes = [[float(v) for v in x] for x in cfg["MODEL"]["ANCHOR_GENERATOR"]["SIZES"]]
    ratios = [[float(v) for v in x] for x in cfg["MODEL"]["ANCHOR_GENERATOR"]["ASPECT_RATIOS"]]
    return (sizes * levels if len(sizes) == 1 else sizes), (ratios * levels if len(ratios) == 1 else ratios)


def test_cell_anchors_are_float_and_size_major() -> None:
    from detco_bench.engines.torchvision.models.anchors import cell_anchors

    cell = cell_anchors([32, 64], [0.5, 1.0, 2.0])
    assert cell.dtype == torch.float32 and cell.shape == (6, 4)
    r = math.sqrt(2)
    expected = []
    for size in (32, 64):
        for w, h in ((size * r, size / r), (size, size), (size / r, size * r)):
            expected.append([-w / 2, -h / 2, w / 2, h / 2])
    np.testing.assert_allclose(cell.numpy(), expected, rtol=0, atol=1e-5)
    assert cell[0, 2].item() != round(cell[0, 2].item())  # 22.627..., not rounded as torchvision does


def expected_anchors(cfg: dict[str, Any], family: str, grids: list[tuple[int, int]]) -> Any:
    strides = FAMILIES[family][1]
    sizes, ratios = level_params(cfg, len(strides))
    offset = float(cfg["MODEL"]["ANCHOR_GENERATOR"].get("OFFSET", 0.0))  # Detectron2's default is 0.0
    return np.concatenate(
        [hand_anchors(*p, offset, g) for p, g in zip(zip(sizes, ratios, strides, strict=True), grids, strict=True)]
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_anchors_follow_nominal_strides(family: str) -> None:
    """The model's own batching (C4: no padding; FPN / RetinaNet: padded to 32) and backbone give the
    feature maps of an odd 201x267 image; its anchor generator places every anchor at the nominal
    stride (C4: res4 is 13x17, and 267 // 17 = 15 would be torchvision's stride)."""
    from detco_bench.engines.torchvision.models.build import build_model
    from detco_bench.engines.torchvision.settings import Settings

    torch.manual_seed(0)
    cfg = config_of(family)
    model = build_model(family, Settings(cfg), "resnet18", None, num_classes=3).eval()
    generator = model.anchor_generator if family == "retinanet" else model.rpn.anchor_generator
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 201, 267), torch.rand(3, 190, 250)])
        features = model.backbone(images.tensors)
    maps = list(features.values()) if isinstance(features, dict) else [features]
    grids = [tuple(int(v) for v in f.shape[-2:]) for f in maps]
    assert grids == grid_sizes(family, 201, 267)
    anchors = generator(images, maps)
    assert len(anchors) == 2 and torch.equal(anchors[0], anchors[1]) and anchors[0].dtype == torch.float32
    np.testing.assert_allclose(anchors[0].numpy(), expected_anchors(cfg, family, grids), rtol=0, atol=1e-3)
    if family == "retinanet":
        assert model.head.classification_head.num_anchors == generator.num_anchors_per_location()[0] == 9


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generator_matches_hand_computation_on_odd_sizes(family: str) -> None:
    """801x1067 and 800x1067 (Detectron2's test size), with the config's OFFSET (0.0) and 0.5."""
    from torchvision.models.detection.image_list import ImageList

    from detco_bench.engines.torchvision.models.anchors import anchor_generator
    from detco_bench.engines.torchvision.settings import Settings

    for offset in (None, 0.5):
        cfg = config_of(family, offset)
        generator = anchor_generator(Settings(cfg), FAMILIES[family][1])
        for h, w in SIZES:
            grids = grid_sizes(family, h, w)
            maps = [torch.zeros(1, 1, gh, gw) for gh, gw in grids]
            anchors = generator(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), maps)[0]
            np.testing.assert_allclose(anchors.numpy(), expected_anchors(cfg, family, grids), rtol=0, atol=1e-3)
            if family == "c4" and h == 800:
                # res4 is 50x67: the last column is centred at 66 * 16 = 1056 (torchvision: 66 * 15 = 990)
                last = anchors.reshape(50, 67, 15, 4)[0, -1, 0]
                assert (last[0] + last[2]).item() / 2 == pytest.approx(1056 + 16 * (offset or 0.0))


def test_broadcast_and_level_count_errors() -> None:
    from detco_bench.engines.torchvision.models.anchors import anchor_generator
    from detco_bench.engines.torchvision.settings import Settings

    flat = Settings({"MODEL": {"ANCHOR_GENERATOR": {"SIZES": [32, 64], "ASPECT_RATIOS": [1.0]}}})
    flat = anchor_generator(flat, [8, 16])
    assert flat.num_anchors_per_location() == [2, 2]
    with pytest.raises(ValueError, match="3 levels"):
        anchor_generator(Settings({"MODEL": {"ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128]]}}}), [8, 16])
    with pytest.raises(ValueError, match="OFFSET"):
        anchor_generator(Settings({"MODEL": {"ANCHOR_GENERATOR": {"OFFSET": 1.0}}}), [16])


@pytest.mark.detectron2
@pytest.mark.parametrize("offset", [None, 0.5])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_anchors_equal_detectron2_element_for_element(family: str, offset: float | None, tmp_path: Path) -> None:
    """detectron2's model, built by the Detectron2 engine from the same task config, holds a
    DefaultAnchorGenerator; on the feature-map sizes of odd images both give identical tensors."""
    from detectron2.modeling import build_model as d2_build_model
    from torchvision.models.detection.image_list import ImageList

    from detco_bench.engines.detectron2.config import build_cfg
    from detco_bench.engines.detectron2.heads import register_components
    from detco_bench.engines.torchvision.models.anchors import anchor_generator
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.transfer import plan_transfer

    task, strides = FAMILIES[family]
    opts = [] if offset is None else ["MODEL.ANCHOR_GENERATOR.OFFSET", str(offset)]
    plan = plan_transfer(
        task, None, tmp_path / "o", engine="detectron2", device="cpu", data_root_dir=tmp_path, opts=opts
    )
    register_components()
    d2_model = d2_build_model(build_cfg(plan))
    d2_gen = d2_model.anchor_generator if family == "retinanet" else d2_model.proposal_generator.anchor_generator
    assert list(d2_gen.strides) == strides and d2_gen.offset == (offset or 0.0)
    ours = anchor_generator(Settings(plan.config), strides)
    assert ours.num_anchors_per_location() == list(d2_gen.num_anchors)
    for h, w in SIZES:
        maps = [torch.zeros(1, 1, gh, gw) for gh, gw in grid_sizes(family, h, w)]
        theirs = [b.tensor for b in d2_gen(maps)]
        mine = ours(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), maps)[0]
        assert mine.shape == (sum(t.shape[0] for t in theirs), 4)
        assert torch.equal(mine, torch.cat(theirs)), (family, h, w)
