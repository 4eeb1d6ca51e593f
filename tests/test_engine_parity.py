"""Weight parity between the engines (issue 3): `weights_map` maps a Detectron2 model's state dict
onto the torchvision engine's model of the same family and config and back.

Default suite: per family, the mapping round-trips on synthetic state dicts with the torchvision
engine's key sets, uses every key once, re-lays out the class / anchor dimensions, refuses what
cannot be mapped, and `load_engine_weights` reads either engine's checkpoint files.

``detectron2``-marked: per family, Detectron2's model (built from the same effective config, random
weights and BN statistics) and the torchvision engine's model with the mapped weights run in eval
mode on the same already-resized images, and agree stage by stage to float tolerance: the
normalized batch, backbone / FPN features, anchors, RPN head outputs and proposals, RoI-head
detections (boxes, scores, classes, mask probabilities, keypoints) and the pasted outputs. The
differences that remain are asserted as what they are and listed in docs/torchvision_engine.md
("Weight parity"); ``pytest -s`` prints the max abs difference of every stage.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from detco_bench.engines.torchvision.models.build import build_model
from detco_bench.engines.torchvision.settings import Settings
from detco_bench.engines.torchvision.weights_map import (
    anchor_order,
    checkpoint_engine,
    detectron2_to_torchvision,
    export_detectron2_checkpoint,
    family_rules,
    load_engine_weights,
    read_model_state,
    torchvision_to_detectron2,
)
from detco_bench.transfer_config import effective_config, set_key

TASK_OF = {
    "c4": "coco_c4_1x",
    "voc_c4": "voc_c4_24k",
    "fpn": "coco_fpn_12k",
    "cityscapes_inst": "cityscapes_inst_fpn",
    "keypoint": "keypoint_fpn_2x",
    "retinanet": "retinanet_12k",
    "cityscapes_sem": "cityscapes_sem",
}
NUM_KEYPOINTS = 5

#: Small heads (the keys the torchvision-engine tests shrink), 3 classes, no test-time resizing
#: (the images are fed already resized), plain BN (SyncBN needs a process group).
SMALL: dict[str, Any] = {
    "MODEL.DEVICE": "cpu",
    "MODEL.RESNETS.NORM": "BN",
    "MODEL.FPN.OUT_CHANNELS": 32,
    "MODEL.ROI_HEADS.NUM_CLASSES": 3,
    "MODEL.RETINANET.NUM_CLASSES": 3,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 32,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": [32, 32, 32],
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": NUM_KEYPOINTS,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 40,
    "TEST.DETECTIONS_PER_IMAGE": 25,
    "INPUT.MIN_SIZE_TEST": 0,
}
R18 = {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64}
#: Per family: the ResNet (Detectron2 builds C4's res5 head and the dilated res5 only with
#: bottleneck blocks) and settings that put FrozenBN, BN, GN and bias-carrying convs on the paths.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "c4": ("resnet50", {"MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 8, "MODEL.RPN.POST_NMS_TOPK_TEST": 20}),
    "voc_c4": ("resnet50", {"MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 8, "MODEL.RPN.POST_NMS_TOPK_TEST": 20}),
    "fpn": ("resnet18", {**R18, "MODEL.FPN.NORM": "BN"}),
    "cityscapes_inst": ("resnet18", {**R18, "MODEL.FPN.NORM": ""}),
    "keypoint": ("resnet18", {**R18, "MODEL.BACKBONE.FREEZE_AT": 2, "MODEL.FPN.NORM": "GN"}),
    "retinanet": ("resnet18", {**R18, "MODEL.RESNETS.NORM": "FrozenBN", "MODEL.FPN.NORM": ""}),
    "cityscapes_sem": ("resnet50", {}),
}


def family_config(family: str, **extra: Any) -> dict[str, Any]:
    config = effective_config(TASK_OF[family])
    for key, value in {**SMALL, **CASES[family][1], **extra}.items():
        set_key(config, key, value)
    return config


def tv_model(family: str, config: dict[str, Any]) -> nn.Module:
    s = Settings(config)
    key = {"cityscapes_sem": "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "retinanet": "MODEL.RETINANET.NUM_CLASSES"}
    classes = s.int(key.get(family, "MODEL.ROI_HEADS.NUM_CLASSES"))
    return build_model(
        family,
        s,
        CASES[family][0],
        None,
        num_classes=classes,
        num_keypoints=NUM_KEYPOINTS if family == "keypoint" else None,
    ).eval()


def random_like(state: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in state.items()}


def background_rows(family: str, key: str) -> slice | None:
    """The rows of a torchvision-engine tensor that Detectron2 has no counterpart for."""
    if family in ("retinanet", "cityscapes_sem"):
        return None
    if key.startswith("roi_heads.box_predictor.bbox_pred."):
        return slice(0, 4)
    if key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return slice(0, 1)
    return None


# --------------------------------------------------------------------------------------------
# Default suite: the mapping itself

#: Detectron2 names each family must produce (pinned, so a renaming cannot go unnoticed here).
D2_NAMES = {
    "c4": [
        "backbone.stem.conv1.weight",
        "backbone.stem.conv1.norm.running_var",
        "backbone.res4.5.conv3.norm.num_batches_tracked",
        "backbone.res2.0.shortcut.norm.weight",
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.anchor_deltas.bias",
        "roi_heads.res5.0.shortcut.weight",
        "roi_heads.res5.2.conv3.norm.running_mean",
        "roi_heads.res5.norm.running_var",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.mask_head.deconv.weight",
        "roi_heads.mask_head.predictor.bias",
    ],
    "fpn": [
        "backbone.bottom_up.stem.conv1.norm.weight",
        "backbone.bottom_up.res5.1.conv2.norm.running_mean",
        "backbone.bottom_up.res3.0.shortcut.weight",
        "backbone.fpn_lateral2.norm.running_var",
        "backbone.fpn_output5.weight",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "roi_heads.box_head.fc1.weight",
        "roi_heads.box_head.fc2.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.mask_head.mask_fcn4.bias",
        "roi_heads.mask_head.predictor.weight",
    ],
    "keypoint": [
        "backbone.bottom_up.res2.1.conv1.norm.running_mean",
        "backbone.bottom_up.stem.conv1.norm.num_batches_tracked",
        "roi_heads.keypoint_head.conv_fcn1.weight",
        "roi_heads.keypoint_head.conv_fcn3.bias",
        "roi_heads.keypoint_head.score_lowres.weight",
    ],
    "retinanet": [
        "backbone.fpn_lateral3.bias",
        "backbone.fpn_output5.weight",
        "backbone.top_block.p6.weight",
        "backbone.top_block.p7.bias",
        "head.cls_subnet.0.weight",
        "head.cls_subnet.6.bias",
        "head.bbox_subnet.4.weight",
        "head.cls_score.weight",
        "head.bbox_pred.bias",
    ],
    "cityscapes_sem": [
        "backbone.stem.conv1.weight",
        "backbone.res5.2.conv3.norm.running_var",
        "sem_seg_head.convs.0.weight",
        "sem_seg_head.convs.1.norm.running_mean",
        "sem_seg_head.predictor.bias",
    ],
}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[dict[str, Any], nn.Module]]:
    torch.manual_seed(0)
    return {f: (cfg := family_config(f), tv_model(f, cfg)) for f in TASK_OF}


@pytest.mark.parametrize("family", list(TASK_OF))
def test_mapping_round_trips(family: str, models: dict[str, tuple[dict[str, Any], nn.Module]]) -> None:
    config, model = models[family]
    tv = random_like(model.state_dict(), seed=1)
    if family == "cityscapes_sem":  # config buffers: the mapping checks them against the config
        tv["mean"], tv["std"] = model.mean.clone(), model.std.clone()
    d2 = torchvision_to_detectron2(tv, family, config)
    derived = 2 if family == "cityscapes_sem" else 0
    # Detectron2 keeps the counter of each BN that FREEZE_AT freezes, torchvision's FrozenBatchNorm2d
    # has none (keypoint: FREEZE_AT 2 on BN; RetinaNet's FrozenBN has no counters on either side)
    from torchvision.ops.misc import FrozenBatchNorm2d

    frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) if family == "keypoint" else 0
    assert frozen == (5 if family == "keypoint" else 0)
    assert len(d2) == len(tv) - derived + frozen  # every key used once, no two on one target
    assert set(D2_NAMES.get(family, [])) <= set(d2), sorted(set(D2_NAMES.get(family, [])) - set(d2))
    back = detectron2_to_torchvision(d2, family, config)
    assert set(back) == set(tv)
    for key, value in tv.items():
        rows = background_rows(family, key)
        if rows is None:
            assert torch.equal(back[key], value), key
        else:  # torchvision's background rows: never trained nor read, zero after a trip through Detectron2
            assert torch.equal(back[key][rows.stop :], value[rows.stop :]) and not back[key][rows].any(), key
    again = torchvision_to_detectron2(back, family, config)
    assert set(again) == set(d2) and all(torch.equal(again[k], d2[k]) for k in d2)
    model.load_state_dict(back, strict=True)


def test_class_and_anchor_layouts(models: dict[str, tuple[dict[str, Any], nn.Module]]) -> None:
    config, model = models["fpn"]
    d2 = torchvision_to_detectron2(random_like(model.state_dict(), 2), "fpn", config)
    tv = detectron2_to_torchvision(d2, "fpn", config)
    k = 3
    cls_d2, cls_tv = d2["roi_heads.box_predictor.cls_score.weight"], tv["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(cls_tv[0], cls_d2[k]) and torch.equal(cls_tv[1:], cls_d2[:k])  # background last -> first
    box_d2, box_tv = d2["roi_heads.box_predictor.bbox_pred.weight"], tv["roi_heads.box_predictor.bbox_pred.weight"]
    assert box_tv.shape[0] == 4 * (k + 1) and torch.equal(box_tv[4:], box_d2)
    mask_d2 = d2["roi_heads.mask_head.predictor.bias"]
    assert torch.equal(tv["roi_heads.mask_predictor.mask_fcn_logits.bias"][1:], mask_d2)

    # RetinaNet: 9 anchors per position, Detectron2 size-major; logits anchor-major (a * K + class)
    config, model = models["retinanet"]
    perm = anchor_order("retinanet", config)
    assert sorted(perm) == list(range(9))
    d2 = torchvision_to_detectron2(random_like(model.state_dict(), 3), "retinanet", config)
    tv = detectron2_to_torchvision(d2, "retinanet", config)
    logits_d2, logits_tv = (
        d2["head.cls_score.bias"].view(9, 3),
        tv["head.classification_head.cls_logits.bias"].view(9, 3),
    )
    assert all(torch.equal(logits_tv[j], logits_d2[perm[j]]) for j in range(9))
    deltas_d2 = d2["head.bbox_pred.weight"].view(9, 4, -1)
    deltas_tv = tv["head.regression_head.bbox_reg.weight"].view(9, 4, -1)
    assert all(torch.equal(deltas_tv[j], deltas_d2[perm[j]]) for j in range(9))
    # C4's RPN: 5 sizes x 3 ratios on one level
    assert sorted(anchor_order("c4", models["c4"][0])) == list(range(15))


def test_mapping_refuses_what_it_cannot_map(models: dict[str, tuple[dict[str, Any], nn.Module]]) -> None:
    config, model = models["fpn"]
    d2 = torchvision_to_detectron2(model.state_dict(), "fpn", config)
    with pytest.raises(ValueError, match="no fpn rule"):
        detectron2_to_torchvision({**d2, "roi_heads.box_head.conv1.weight": torch.zeros(1)}, "fpn", config)
    with pytest.raises(ValueError, match="81 rows, expected 4"):
        detectron2_to_torchvision({**d2, "roi_heads.box_predictor.cls_score.bias": torch.zeros(81)}, "fpn", config)
    with pytest.raises(ValueError, match="STRIDE_IN_1X1"):
        family_rules("c4", family_config("c4", **{"MODEL.RESNETS.STRIDE_IN_1X1": True}))
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_BBOX_REG"):
        family_rules("fpn", family_config("fpn", **{"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True}))
    with pytest.raises(ValueError, match="no weight mapping"):
        family_rules("nope", config)
    sem_config, sem = models["cityscapes_sem"]
    state = sem.state_dict()
    state["mean"] = state["mean"] + 0.1
    with pytest.raises(ValueError, match="not the config's"):
        torchvision_to_detectron2(state, "cityscapes_sem", sem_config)


def test_load_engine_weights_reads_both_engines_files(
    tmp_path: Path, models: dict[str, tuple[dict[str, Any], nn.Module]]
) -> None:
    from detco_bench.engines.torchvision.train.checkpoint import CHECKPOINT_FORMAT

    config, model = models["keypoint"]
    tv = random_like(model.state_dict(), 4)
    ours = tmp_path / "ours.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "iteration": 3, "model": tv, "optimizer": None}, ours)
    theirs = export_detectron2_checkpoint(ours, tmp_path / "d2" / "model_final.pth", "keypoint", config)
    assert set(read_model_state(theirs)) == set(torchvision_to_detectron2(tv, "keypoint", config))
    torch.save(tv, tmp_path / "bare.pth")
    assert [checkpoint_engine(p) for p in (ours, theirs, tmp_path / "bare.pth")] == [
        "torchvision",
        "detectron2",
        "torchvision",
    ]
    for path, engine in ((ours, "torchvision"), (theirs, "detectron2")):
        fresh = tv_model("keypoint", config)
        assert load_engine_weights(fresh, path, "keypoint", config) == engine
        loaded = fresh.state_dict()
        assert all(torch.equal(loaded[k], tv[k]) for k in tv if background_rows("keypoint", k) is None)
    # a checkpoint trained with FREEZE_AT 0 (BN counters everywhere) loads into a FREEZE_AT 2 model
    unfrozen = family_config("keypoint", **{"MODEL.BACKBONE.FREEZE_AT": 0})
    state = random_like(tv_model("keypoint", unfrozen).state_dict(), 5)
    torch.save({"model": torchvision_to_detectron2(state, "keypoint", unfrozen)}, tmp_path / "unfrozen.pth")
    assert load_engine_weights(tv_model("keypoint", config), tmp_path / "unfrozen.pth", "keypoint", config)
    torch.save({"model": {"something.else": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no keypoint rule"):
        load_engine_weights(tv_model("keypoint", config), tmp_path / "bad.pth", "keypoint", config)


# --------------------------------------------------------------------------------------------
# detectron2: the same weights, the same outputs

DIFFS: dict[str, dict[str, float]] = {}  # family -> stage -> max abs difference (or a recorded share)
SCALES: dict[str, dict[str, float]] = {}  # family -> stage -> the reference's magnitude


def agree(family: str, stage: str, ours: Tensor, theirs: Tensor, rel: float = 1e-4) -> None:
    """`ours` (torchvision engine) equals `theirs` (Detectron2) within `rel` of theirs' magnitude."""
    assert ours.shape == theirs.shape, (stage, tuple(ours.shape), tuple(theirs.shape))
    ours, theirs = ours.double(), theirs.double()
    diff = float((ours - theirs).abs().max()) if ours.numel() else 0.0
    scale = max(1.0, float(theirs.abs().max())) if theirs.numel() else 1.0
    DIFFS.setdefault(family, {})[stage] = max(diff, DIFFS.get(family, {}).get(stage, 0.0))
    SCALES.setdefault(family, {})[stage] = max(scale, SCALES.get(family, {}).get(stage, 0.0))
    assert diff <= rel * scale, f"{family} {stage}: max abs diff {diff:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def print_diffs() -> Any:
    yield
    for family, stages in DIFFS.items():
        scales = SCALES.get(family, {})
        print(f"\n{family}:")
        for stage, v in stages.items():
            print(f"  {stage}: {v:.2e}" + (f" (magnitude {scales[stage]:.3g})" if stage in scales else ""))


def d2_model(family: str, config: dict[str, Any]) -> nn.Module:
    from detectron2.config import CfgNode, get_cfg
    from detectron2.modeling import build_model as d2_build

    from detco_bench.engines.detectron2.config import add_detco_config
    from detco_bench.engines.detectron2.heads import register_components

    register_components()
    cfg = get_cfg()
    add_detco_config(cfg)
    cfg.merge_from_other_cfg(CfgNode(copy.deepcopy(config)))
    return d2_build(cfg).eval()


def randomize(model: nn.Module, seed: int) -> None:
    """Random norms with non-trivial statistics, random biases; convs / linears keep their random
    initialisation, except the near-zero one of the predictors (spread, so that scores, boxes and
    masks vary)."""
    from detectron2.layers import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)

    def uniform(t: Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)):
                uniform(module.weight, 0.5, 1.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.2)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.2)
                    uniform(module.running_var, 0.5, 2.0)
            elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                if float(module.weight.std()) < 0.02:  # the predictors' N(0, 0.01 / 0.001): spread them
                    # box deltas less, or the boxes collapse onto the image borders
                    gain = 0.1 if name.endswith(("bbox_pred", "anchor_deltas")) else 1.0
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=g) * gain / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.2)


def images(seed: int = 0) -> list[Tensor]:
    """Two RGB images in 0..255 of different sizes: the second is padded, in a batch of 128 x 256."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 128, 256, generator=g) * 255, torch.rand(3, 100, 180, generator=g) * 255]


def d2_inputs(imgs: list[Tensor]) -> list[dict[str, Any]]:
    return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in imgs]


def paired(family: str) -> tuple[dict[str, Any], nn.Module, nn.Module, list[int] | None]:
    config = family_config(family)
    torch.manual_seed(0)
    d2 = d2_model(family, config)
    randomize(d2, seed=10)
    tv = tv_model(family, config)
    tv.load_state_dict(detectron2_to_torchvision(d2.state_dict(), family, config), strict=True)
    back = torchvision_to_detectron2(tv.state_dict(), family, config)  # and back: Detectron2's own state
    theirs = d2.state_dict()
    assert set(back) == set(theirs) and all(torch.equal(back[k], theirs[k]) for k in theirs)
    perm = anchor_order(family, config) if family != "cityscapes_sem" else None
    return config, d2, tv, perm


@pytest.mark.detectron2
def test_checkpoint_files_interchange(tmp_path: Path) -> None:
    """Detectron2's checkpointer's files load into the engine's model, and the engine's checkpoints,
    exported, load into Detectron2's model through its checkpointer (what MODEL.WEIGHTS does)."""
    from detectron2.checkpoint import DetectionCheckpointer

    from detco_bench.engines.torchvision.train.checkpoint import CHECKPOINT_FORMAT

    family = "fpn"
    config, d2, tv, _ = paired(family)
    (tmp_path / "d2").mkdir()
    DetectionCheckpointer(d2, save_dir=str(tmp_path / "d2")).save("model_final", iteration=7)
    fresh = tv_model(family, config)
    assert load_engine_weights(fresh, tmp_path / "d2" / "model_final.pth", family, config) == "detectron2"
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in fresh.state_dict().items())

    ours = tmp_path / "tv" / "model_final.pth"
    ours.parent.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "iteration": 7, "model": tv.state_dict()}, ours)
    exported = export_detectron2_checkpoint(ours, tmp_path / "export" / "model_final.pth", family, config)
    other = d2_model(family, config)
    DetectionCheckpointer(other).load(str(exported))
    assert all(torch.equal(v, d2.state_dict()[k]) for k, v in other.state_dict().items())


def anchors_compared(
    family: str, generator: nn.Module, d2_generator: nn.Module, perm: list[int], tv_images: Any, feats: list[Tensor]
) -> list[Tensor]:
    """Per image and level, the engine's anchors against Detectron2's (position-major, its anchor
    order permuted to the engine's); returns the engine's."""
    d2_anchors = d2_generator(feats)  # anchors depend on the feature shapes only
    tv_anchors = generator(tv_images, feats)
    a = len(perm)
    for per_image in tv_anchors:
        start = 0
        for level, boxes in enumerate(d2_anchors):
            ref = boxes.tensor.view(-1, a, 4)[:, perm].reshape(-1, 4)
            agree(family, f"anchors[{level}]", per_image[start : start + len(ref)], ref)
            start += len(ref)
        assert start == len(per_image)
    return tv_anchors


def rpn_stage(family: str, d2: nn.Module, tv: nn.Module, perm: list[int], imgs: list[Tensor]) -> Any:
    """Normalized batch, backbone features, anchors, RPN head and proposals; returns what the RoI
    heads need on both sides."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    d2_images = d2.preprocess_image(d2_inputs(imgs))
    tv_images, _ = tv.transform([im / 255 for im in imgs])
    agree(family, "normalized batch", tv_images.tensors, d2_images.tensor)
    d2_feats = d2.backbone(d2_images.tensor)
    tv_feats = tv.backbone(tv_images.tensors)
    if isinstance(tv_feats, Tensor):
        tv_feats = {"0": tv_feats}
    pg = d2.proposal_generator
    d2_list = [d2_feats[f] for f in pg.in_features]
    tv_list = list(tv_feats.values())
    for name, ours, theirs in zip(pg.in_features, tv_list, d2_list, strict=True):
        agree(family, f"features {name}", ours, theirs)
    # what remains is the float rounding of the two normalisations: on the same batch the
    # backbones agree bit for bit, up to FrozenBN (Detectron2: F.batch_norm without grad;
    # torchvision: x * scale + shift)
    same = tv.backbone(d2_images.tensor)
    same = list(same.values()) if isinstance(same, dict) else [same]
    for ours, theirs in zip(same, d2_list, strict=True):
        agree(family, "features (same batch)", ours, theirs, rel=1e-5)

    tv_anchors = anchors_compared(family, tv.rpn.anchor_generator, pg.anchor_generator, perm, tv_images, tv_list)

    d2_obj, d2_deltas = pg.rpn_head(d2_list)
    tv_obj, tv_deltas = tv.rpn.head(tv_list)
    a = len(perm)
    for o1, o2, b1, b2 in zip(tv_obj, d2_obj, tv_deltas, d2_deltas, strict=True):
        agree(family, "rpn objectness", o1, o2[:, perm])
        n, _, h, w = b2.shape
        agree(family, "rpn deltas", b1, b2.view(n, a, 4, h, w)[:, perm].reshape(n, a * 4, h, w))
    d2_props, _ = pg(d2_images, d2_feats)
    per_level = [o[0].numel() for o in tv_obj]
    obj, deltas = concat_box_prediction_layers(tv_obj, tv_deltas)
    proposals = tv.rpn.box_coder.decode(deltas, tv_anchors).view(len(imgs), -1, 4)
    tv_boxes, tv_scores = tv.rpn.filter_proposals(proposals, obj, tv_images.image_sizes, per_level)
    for theirs, boxes, scores in zip(d2_props, tv_boxes, tv_scores, strict=True):
        agree(family, "proposal boxes", boxes, theirs.proposal_boxes.tensor)
        agree(family, "proposal scores", scores, theirs.objectness_logits.sigmoid())
    return d2_images, d2_feats, d2_props, tv_images, tv_feats, tv_boxes


def compare_instances(family: str, tv_dets: list[dict[str, Tensor]], d2_dets: list[Any], where: str) -> None:
    for ours, theirs in zip(tv_dets, d2_dets, strict=True):
        assert len(theirs) > 0, f"{family}: no detections to compare"
        agree(family, f"{where} boxes", ours["boxes"], theirs.pred_boxes.tensor)
        agree(family, f"{where} scores", ours["scores"], theirs.scores)
        offset = 0 if family == "retinanet" else 1  # torchvision's label 0 is the background
        assert torch.equal(ours["labels"], theirs.pred_classes + offset), f"{family} {where} classes"


@pytest.mark.detectron2
@pytest.mark.parametrize("family", ["c4", "voc_c4", "fpn", "keypoint"])
def test_rcnn_parity(family: str, print_diffs: None) -> None:
    from detectron2.structures.keypoints import heatmaps_to_keypoints

    config, d2, tv, perm = paired(family)
    assert perm is not None
    imgs = images()
    with torch.no_grad():
        d2_images, d2_feats, d2_props, tv_images, tv_feats, tv_props = rpn_stage(family, d2, tv, perm, imgs)
        d2_dets, _ = d2.roi_heads(d2_images, d2_feats, d2_props)
        tv_dets, _ = tv.roi_heads(tv_feats, tv_props, tv_images.image_sizes)
        compare_instances(family, tv_dets, d2_dets, "detections")
        for ours, theirs in zip(tv_dets, d2_dets, strict=True):
            if theirs.has("pred_masks"):
                agree(family, "mask probabilities (RoI)", ours["masks"], theirs.pred_masks)
            if theirs.has("pred_keypoints"):
                agree(family, "keypoints xy", ours["keypoints"][..., :2], theirs.pred_keypoints[..., :2])
                # torchvision's keypoint score is the heatmap logit at the maximum (Detectron2's
                # heatmaps_to_keypoints column 2); Detectron2 reports column 3, the logit's
                # softmax-like normalisation over the RoI (docs: Weight parity)
                logits = heatmaps_to_keypoints(theirs.pred_keypoint_heatmaps, theirs.pred_boxes.tensor)[..., 2]
                agree(family, "keypoint scores (heatmap logit)", ours["keypoints_scores"], logits)
                assert bool((ours["keypoints"][..., 2] == 1).all())

        # the full forward passes, pasted into the image
        final_d2 = [r["instances"] for r in d2(d2_inputs(imgs))]
        final_tv = tv([im / 255 for im in imgs])
        compare_final(family, final_tv, final_d2, d2_dets, imgs, "final")
        if family in ("fpn", "keypoint"):
            # test-time resizing: the engine resizes itself (shortest edge 96) and maps its outputs
            # back; Detectron2 gets the engine's resized image and the original size to map back to
            tv.transform.min_size = (96,)
            resized = [tv.transform.resize(im / 255)[0] for im in imgs]
            inputs = [
                {"image": r * 255, "height": im.shape[1], "width": im.shape[2]}
                for r, im in zip(resized, imgs, strict=True)
            ]
            raw = d2.inference(inputs, do_postprocess=False)
            final_d2 = [r["instances"] for r in d2(inputs)]
            compare_final(family, tv([im / 255 for im in imgs]), final_d2, raw, imgs, "final (resized)")


def compare_final(
    family: str, final_tv: list[dict[str, Tensor]], final_d2: list[Any], rois: list[Any], imgs: list[Tensor], where: str
) -> None:
    """The postprocessed outputs (in the input image's coordinates); `rois`: Detectron2's detections
    before postprocessing (their RoI masks)."""
    compare_instances(family, final_tv, final_d2, where)
    for i, (ours, theirs, roi) in enumerate(zip(final_tv, final_d2, rois, strict=True)):
        if theirs.has("pred_keypoints"):
            agree(family, f"{where} keypoints xy", ours["keypoints"][..., :2], theirs.pred_keypoints[..., :2])
        if theirs.has("pred_masks"):
            compare_pasted(family, ours, theirs, roi.pred_masks, tuple(imgs[i].shape[1:]), where)


def compare_pasted(
    family: str, ours: dict[str, Tensor], theirs: Any, roi_masks: Tensor, size: tuple[int, int], where: str
) -> None:
    """The engine's pasted masks (probabilities) against Detectron2's CPU paste (each mask sampled
    within its box widened by a pixel) of Detectron2's RoI masks: soft, into the engine's boxes (so
    that the boxes' float noise does not count twice), and thresholded at 0.5 against Detectron2's
    final masks (a pixel may differ only where the probability is within float noise of 0.5)."""
    from detectron2.layers.mask_ops import _do_paste_mask

    def paste(boxes: Tensor) -> Tensor:
        soft = torch.zeros(len(roi_masks), *size)
        for i in range(len(roi_masks)):
            pasted, region = _do_paste_mask(roi_masks[i : i + 1], boxes[i : i + 1], *size)
            soft[i][region] = pasted[0]
        return soft

    agree(family, f"{where} pasted masks", ours["masks"][:, 0], paste(ours["boxes"]))
    binary = ours["masks"][:, 0] >= 0.5
    assert binary.shape == theirs.pred_masks.shape
    differ = binary ^ theirs.pred_masks
    DIFFS[family][f"{where} thresholded masks: pixels differing"] = float(differ.sum())
    assert bool(((paste(theirs.pred_boxes.tensor)[differ] - 0.5).abs() < 2e-3).all())
    assert bool(theirs.pred_masks.any()), f"{family}: the masks are empty"


@pytest.mark.detectron2
def test_mask_pasting_on_smooth_masks(print_diffs: None) -> None:
    """Why the engine pastes masks as Detectron2 does: how far torchvision's own paste_masks_in_image
    is from Detectron2's on masks with one smooth boundary (a disc filling the RoI)."""
    from detectron2.layers.mask_ops import paste_masks_in_image as d2_paste
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(28) + 0.5, torch.arange(28) + 0.5, indexing="ij")
    disc = ((((yy - 14) ** 2 + (xx - 14) ** 2).sqrt() - 12).neg() * 2).sigmoid()  # soft edge, radius 12
    for side in (16.0, 48.0, 160.0):
        xy = torch.rand(64, 2, generator=g) * 200
        wh = side * (0.75 + 0.5 * torch.rand(64, 2, generator=g))
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = disc.expand(64, 1, 28, 28)
        ours = tv_paste(masks, boxes, (400, 400), padding=1)[:, 0] >= 0.5
        theirs = d2_paste(masks[:, 0], boxes, (400, 400), threshold=0.5)
        share = float((ours ^ theirs).sum()) / float((ours | theirs).sum())
        DIFFS.setdefault("torchvision's mask paste", {})[f"disc in ~{side:.0f}px boxes: pixels differing / union"] = (
            share
        )
        assert share < 0.25


@pytest.mark.detectron2
def test_retinanet_parity(print_diffs: None) -> None:
    family = "retinanet"
    config, d2, tv, perm = paired(family)
    assert perm is not None
    imgs = images()
    k, a = 3, len(perm)
    with torch.no_grad():
        d2_images = d2.preprocess_image(d2_inputs(imgs))
        tv_images, _ = tv.transform([im / 255 for im in imgs])
        agree(family, "normalized batch", tv_images.tensors, d2_images.tensor)
        d2_feats = d2.backbone(d2_images.tensor)
        d2_list = [d2_feats[f] for f in d2.head_in_features]
        tv_list = list(tv.backbone(tv_images.tensors).values())
        for name, ours, theirs in zip(d2.head_in_features, tv_list, d2_list, strict=True):
            agree(family, f"features {name}", ours, theirs)
        same = tv.backbone(d2_images.tensor).values()
        for ours, theirs in zip(same, d2_list, strict=True):
            agree(family, "features (same batch)", ours, theirs, rel=1e-5)
        anchors_compared(family, tv.anchor_generator, d2.anchor_generator, perm, tv_images, tv_list)
        d2_logits, d2_deltas = d2.head(d2_list)
        cls, reg = tv.head.classification_head, tv.head.regression_head
        for ours_f, l2, b2 in zip(tv_list, d2_logits, d2_deltas, strict=True):
            n, _, h, w = l2.shape
            agree(
                family,
                "class logits",
                cls.cls_logits(cls.conv(ours_f)),
                l2.view(n, a, k, h, w)[:, perm].reshape(l2.shape),
            )
            agree(
                family, "box deltas", reg.bbox_reg(reg.conv(ours_f)), b2.view(n, a, 4, h, w)[:, perm].reshape(b2.shape)
            )

        final_tv = tv([im / 255 for im in imgs])
        final_d2 = [r["instances"] for r in d2(d2_inputs(imgs))]
        # NMS on the unclipped boxes, then clipped, empty boxes dropped (Detectron2's order;
        # torchvision's RetinaNet clips before NMS)
        compare_instances(family, final_tv, final_d2, "final")
        # and with the test-time resizing of the engine
        tv.transform.min_size = (96,)
        resized = [tv.transform.resize(im / 255)[0] for im in imgs]
        inputs = [
            {"image": r * 255, "height": im.shape[1], "width": im.shape[2]} for r, im in zip(resized, imgs, strict=True)
        ]
        compare_instances(
            family, tv([im / 255 for im in imgs]), [r["instances"] for r in d2(inputs)], "final (resized)"
        )


@pytest.mark.detectron2
def test_semantic_parity(print_diffs: None) -> None:
    family = "cityscapes_sem"
    config, d2, tv, _ = paired(family)
    imgs = [im[:, :96, :160] for im in images()]  # sizes divisible by the stride (16)
    with torch.no_grad():
        for im in imgs:
            batch = tv._batch([im / 255])
            agree(family, "normalized batch", batch, ((im - d2.pixel_mean) / d2.pixel_std)[None])
            theirs = d2.backbone(((im - d2.pixel_mean) / d2.pixel_std)[None])["res5"]
            ours = tv.trunk(batch)
            same = tv.trunk(((im - d2.pixel_mean) / d2.pixel_std)[None])
            agree(family, "features (same batch)", same, theirs, rel=1e-5)
            agree(family, "features res5", ours, theirs)
            agree(family, "head logits (stride 16)", tv.predictor(tv.head(ours)),
                  d2.sem_seg_head.predictor(d2.sem_seg_head.convs(theirs)))  # fmt: skip
            out_d2 = d2(d2_inputs([im]))[0]["sem_seg"]
            out_tv = tv([im / 255])[0]
            agree(family, "logits (image resolution)", out_tv, out_d2)
            assert torch.equal(out_tv.argmax(0), out_d2.argmax(0))
