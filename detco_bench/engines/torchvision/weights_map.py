"""Weight parity between the engines: Detectron2 model state dicts <-> the torchvision engine's.

`detectron2_to_torchvision(state, family, cfg)` renames (and, for four kinds of output layers,
re-lays out) every tensor of a Detectron2 model built from the effective config `cfg` into the
state dict of the torchvision engine's model of the same family and config;
`torchvision_to_detectron2` is the inverse. Every key of the source must be taken by exactly one
rule and no two keys may land on the same target (a `ValueError` names the offenders), so nothing is
dropped silently. The rules per family are in `family_rules`; docs/torchvision_engine.md ("Weight
parity") lists them with what each engine computes from them.

Beyond renaming, four layouts differ:

* ``classes``: the softmax classifier (box predictor ``cls_score``): Detectron2 puts the background
  row last (K classes, then background), torchvision first.
* ``box_deltas``: class-specific box deltas: torchvision's predictor has a background block of 4
  rows in front, which is never trained (the loss reads the foreground class only) nor used
  (inference drops it); Detectron2 has none. Detectron2 -> torchvision fills it with zeros,
  torchvision -> Detectron2 drops it.
* ``masks``: per-class mask logits: the same with one background channel in front.
* ``anchors``: per-anchor output blocks (RPN objectness / deltas, RetinaNet class logits / deltas,
  anchor-major in both engines: block of anchor a at rows a*B..a*B+B-1) follow the order of the
  anchors of a position: Detectron2's is size-major (for size: for ratio), torchvision's own
  AnchorGenerator's ratio-major. The permutation is read off the engine's anchor generator
  (`anchor_order`; the identity with the engine's Detectron2 anchors), so it stays right if the
  generator changes.

Keys that exist on one side only, by rule: the semantic model's ``mean`` / ``std`` buffers are the
config's PIXEL_MEAN / STD (/255), which Detectron2 keeps out of its state dict (created from `cfg`
one way, checked against it the other way); the ``num_batches_tracked`` of the BatchNorms that
FREEZE_AT freezes, which Detectron2 keeps and torchvision's FrozenBatchNorm2d does not (dropped one
way, 0 the other way; unused either way).

`load_engine_weights` loads either engine's checkpoint (Detectron2's ``model_final.pth``,
``{"model": ...}``, or ours) into a torchvision-engine model; `export_detectron2_checkpoint`
writes a torchvision-engine checkpoint as a file Detectron2's DetectionCheckpointer reads
(MODEL.WEIGHTS).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detco_bench.engines.torchvision.settings import Settings
from detco_bench.transfer_config import SYNC_BN_NAMES

SAME, CLASSES, BOX_DELTAS, MASKS, ANCHORS = "same", "classes", "box_deltas", "masks", "anchors"
C4_FAMILIES = ("c4", "voc_c4")
RCNN_FPN_FAMILIES = ("fpn", "cityscapes_inst", "keypoint")
MAPPED_FAMILIES = (*C4_FAMILIES, *RCNN_FPN_FAMILIES, "retinanet", "cityscapes_sem")
DETECTRON2 = "detectron2"
TORCHVISION = "torchvision"
_COUNTER = "num_batches_tracked"

Config = Mapping[str, Any] | Settings


@dataclass(frozen=True)
class Rule:
    """One name rule: `d2` and `tv` are patterns with ``{field}`` placeholders (``{p}``: a parameter
    or buffer name, every other field: a number). `fields` relate numbers across the engines,
    ``tv = a * d2 + b`` for (name, a, b); a number that is not an integer on the other side is no
    match. `kind` is the value layout (module docstring)."""

    d2: str
    tv: str
    fields: tuple[tuple[str, Fraction, int], ...] = ()
    kind: str = SAME

    def rename(self, name: str, to_tv: bool) -> str | None:
        """`name` on the other side, or None when this rule does not take `name`."""
        src, dst = (self.d2, self.tv) if to_tv else (self.tv, self.d2)
        match = _regex(src).fullmatch(name)
        if match is None:
            return None
        values = dict(match.groupdict())
        for field, a, b in self.fields:
            v = int(values[field])
            new = a * v + b if to_tv else (v - b) / a
            if new.denominator != 1 or new < 0:
                return None
            values[field] = str(int(new))
        return dst.format(**values)


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", pattern)
    out = [
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{'[a-z_]+' if part == 'p' else '[0-9]+'})"
        for i, part in enumerate(parts)
    ]
    return re.compile("".join(out))


def _rule(d2: str, tv: str, kind: str = SAME, **fields: tuple[float | Fraction, int]) -> Rule:
    return Rule(d2, tv, tuple((k, Fraction(a), int(b)) for k, (a, b) in fields.items()), kind)


def _blocks(d2: str, tv: str, **fields: tuple[float | Fraction, int]) -> list[Rule]:
    """ResNet blocks ``d2`` (Detectron2: conv1..3 each with .norm, shortcut with .norm) <-> ``tv``
    (torchvision: conv1..3, bn1..3, downsample.0 / .1); both patterns end at the block index."""
    return [
        _rule(f"{d2}.conv{{c}}.weight", f"{tv}.conv{{c}}.weight", **fields),
        _rule(f"{d2}.conv{{c}}.norm.{{p}}", f"{tv}.bn{{c}}.{{p}}", **fields),
        _rule(f"{d2}.shortcut.weight", f"{tv}.downsample.0.weight", **fields),
        _rule(f"{d2}.shortcut.norm.{{p}}", f"{tv}.downsample.1.{{p}}", **fields),
    ]


def _resnet(d2: str, stem_conv: str, stem_norm: str, tv_stage: str, shift: int) -> list[Rule]:
    """Stem and res2..res5 under the Detectron2 prefix `d2`; torchvision stage ``res<s>`` is
    `tv_stage` with s + `shift` (layer1..4: -1; the semantic model's Sequential trunk: +2)."""
    return [
        _rule(f"{d2}stem.conv1.weight", f"{stem_conv}.weight"),
        _rule(f"{d2}stem.conv1.norm.{{p}}", f"{stem_norm}.{{p}}"),
        *_blocks(f"{d2}res{{s}}.{{b}}", f"{tv_stage}.{{b}}", s=(1, shift)),
    ]


def _fpn(first_level: int) -> list[Rule]:
    """Lateral (1x1) and output (3x3) convs of levels first_level.. with their norms, and the top
    block (RetinaNet's P6 / P7 convs; R-CNN's max-pool P6 has no weights)."""
    lvl = {"l": (1, -first_level)}
    rules = []
    for d2, tv in (("fpn_lateral", "inner_blocks"), ("fpn_output", "layer_blocks")):
        rules.append(_rule(f"backbone.{d2}{{l}}.{{p}}", f"backbone.fpn.{tv}.{{l}}.0.{{p}}", **lvl))
        rules.append(_rule(f"backbone.{d2}{{l}}.norm.{{p}}", f"backbone.fpn.{tv}.{{l}}.1.{{p}}", **lvl))
    rules.append(_rule("backbone.top_block.p{k}.{p}", "backbone.fpn.extra_blocks.p{k}.{p}"))
    return rules


_RPN = [
    _rule("proposal_generator.rpn_head.conv.{p}", "rpn.head.conv.0.0.{p}"),
    _rule("proposal_generator.rpn_head.objectness_logits.{p}", "rpn.head.cls_logits.{p}", ANCHORS),
    _rule("proposal_generator.rpn_head.anchor_deltas.{p}", "rpn.head.bbox_pred.{p}", ANCHORS),
]
_BOX_PREDICTOR = [
    _rule("roi_heads.box_predictor.cls_score.{p}", "roi_heads.box_predictor.cls_score.{p}", CLASSES),
    _rule("roi_heads.box_predictor.bbox_pred.{p}", "roi_heads.box_predictor.bbox_pred.{p}", BOX_DELTAS),
]
_MASK_PREDICTOR = [
    _rule("roi_heads.mask_head.deconv.{p}", "roi_heads.mask_predictor.conv5_mask.{p}"),
    _rule("roi_heads.mask_head.predictor.{p}", "roi_heads.mask_predictor.mask_fcn_logits.{p}", MASKS),
]


def family_rules(family: str, cfg: Config) -> list[Rule]:
    """The name rules of `family` under `cfg` (which must describe a model both engines build the
    same way: `check_mappable`)."""
    s = _settings(cfg)
    check_mappable(family, s)
    if family in C4_FAMILIES:
        return [
            *_resnet("backbone.", "backbone.conv1", "backbone.bn1", "backbone.layer{s}", -1),
            *_RPN,
            # Res5ROIHeads: res5 lives in the RoI head; the extra norm (Res5ROIHeadsExtraNorm) after it
            *_blocks("roi_heads.res5.{b}", "roi_heads.box_head.res5.{b}"),
            _rule("roi_heads.res5.norm.{p}", "roi_heads.box_head.norm.{p}"),
            *_BOX_PREDICTOR,
            *_MASK_PREDICTOR,
        ]
    if family in RCNN_FPN_FAMILIES:
        return [
            *_resnet("backbone.bottom_up.", "backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer{s}", -1),
            *_fpn(2),
            *_RPN,
            # FastRCNNConvFCHead fc1/fc2 = TwoMLPHead fc6/fc7; both flatten the pooled [C, H, W] row-major
            _rule("roi_heads.box_head.fc{i}.{p}", "roi_heads.box_head.fc{i}.{p}", i=(1, 5)),
            *_BOX_PREDICTOR,
            _rule("roi_heads.mask_head.mask_fcn{i}.{p}", "roi_heads.mask_head.{i}.0.{p}", i=(1, -1)),
            *_MASK_PREDICTOR,
            # torchvision's KeypointRCNNHeads interleaves ReLUs: conv k sits at index 2k
            _rule("roi_heads.keypoint_head.conv_fcn{i}.{p}", "roi_heads.keypoint_head.{i}.{p}", i=(2, -2)),
            _rule("roi_heads.keypoint_head.score_lowres.{p}", "roi_heads.keypoint_predictor.kps_score_lowres.{p}"),
        ]
    if family == "retinanet":
        half = {"i": (Fraction(1, 2), 0)}  # Detectron2's subnets interleave ReLUs: conv k at index 2k
        return [
            *_resnet("backbone.bottom_up.", "backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer{s}", -1),
            *_fpn(3),
            _rule("head.cls_subnet.{i}.{p}", "head.classification_head.conv.{i}.0.{p}", **half),
            _rule("head.bbox_subnet.{i}.{p}", "head.regression_head.conv.{i}.0.{p}", **half),
            _rule("head.cls_score.{p}", "head.classification_head.cls_logits.{p}", ANCHORS),
            _rule("head.bbox_pred.{p}", "head.regression_head.bbox_reg.{p}", ANCHORS),
        ]
    if family == "cityscapes_sem":
        norm = bool(str(s["MODEL.SEM_SEG_HEAD.NORM"]))
        step = 3 if norm else 2  # torchvision's head: conv, [norm], ReLU per conv
        rules = [
            *_resnet("backbone.", "trunk.0", "trunk.1", "trunk.{s}", 2),
            _rule("sem_seg_head.convs.{i}.{p}", "head.{i}.{p}", i=(step, 0)),
            _rule("sem_seg_head.predictor.{p}", "predictor.{p}"),
        ]
        if norm:
            rules.append(_rule("sem_seg_head.convs.{i}.norm.{p}", "head.{i}.{p}", i=(3, 1)))
        return rules
    raise ValueError(f"no weight mapping for family {family!r}; mapped: {', '.join(MAPPED_FAMILIES)}")


def _settings(cfg: Config) -> Settings:
    return cfg if isinstance(cfg, Settings) else Settings(cfg)


def check_mappable(family: str, cfg: Config) -> None:
    """ValueError when `cfg` asks for a Detectron2 model the torchvision engine does not build
    (then no renaming can make the two agree)."""
    problems = unbuilt_settings(family, cfg)
    if problems:
        raise ValueError(f"{family}: cannot map weights between the engines: {'; '.join(problems)}")


def unbuilt_settings(family: str, cfg: Config) -> list[str]:
    """The settings of `cfg` that ask for a Detectron2 model the torchvision engine does not build
    (its trunk is torchvision's ResNet; its heads have no norm, no convs in the FPN box head and
    class-specific outputs), one phrase each."""
    s = _settings(cfg)
    problems = []
    if s.int("MODEL.RESNETS.DEPTH") >= 50:
        if bool(s["MODEL.RESNETS.STRIDE_IN_1X1"]):
            problems.append("MODEL.RESNETS.STRIDE_IN_1X1 True (torchvision's ResNet strides in the 3x3 conv)")
        if s.int("MODEL.RESNETS.NUM_GROUPS") != 1 or s.int("MODEL.RESNETS.WIDTH_PER_GROUP") != 64:
            problems.append("a ResNeXt trunk (MODEL.RESNETS.NUM_GROUPS / WIDTH_PER_GROUP)")
    if any(s.get("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False])):
        problems.append("deformable convs (MODEL.RESNETS.DEFORM_ON_PER_STAGE)")
    if family not in ("retinanet", "cityscapes_sem"):
        for key in ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"):
            if s.get(key, False):
                problems.append(f"{key} True")
        if family in RCNN_FPN_FAMILIES and int(s.get("MODEL.ROI_BOX_HEAD.NUM_CONV", 0)):
            problems.append("convs in the box head (MODEL.ROI_BOX_HEAD.NUM_CONV)")
        if str(s.get("MODEL.ROI_MASK_HEAD.NORM", "")):
            problems.append("a norm in the mask head (MODEL.ROI_MASK_HEAD.NORM)")
    if family == "retinanet" and str(s.get("MODEL.RETINANET.NORM", "")):
        problems.append("a norm in the RetinaNet head (MODEL.RETINANET.NORM)")
    return problems


# --------------------------------------------------------------------------------------------
# Value layouts


def _d2_cell_sizes(s: Settings, levels: int) -> list[list[tuple[float, float]]]:
    """Detectron2's DefaultAnchorGenerator per level: (w, h) for size in sizes, for ratio in ratios
    (ratio = h / w), a single entry broadcast to every level."""
    sizes = [list(map(float, x)) for x in s.list("MODEL.ANCHOR_GENERATOR.SIZES")]
    ratios = [list(map(float, x)) for x in s.list("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")]
    sizes = sizes * levels if len(sizes) == 1 else sizes
    ratios = ratios * levels if len(ratios) == 1 else ratios
    out = []
    for level_sizes, level_ratios in zip(sizes, ratios, strict=True):
        cells = []
        for size in level_sizes:
            for ratio in level_ratios:
                w = math.sqrt(size * size / ratio)
                cells.append((w, ratio * w))
        out.append(cells)
    return out


#: The nominal strides of the anchor levels (Detectron2's: res4; P2-P6; P3-P7).
ANCHOR_STRIDES = {"c4": [16], "rcnn_fpn": [4, 8, 16, 32, 64], "retinanet": [8, 16, 32, 64, 128]}


def anchor_order(family: str, cfg: Config) -> list[int]:
    """perm[j] = the Detectron2 index of the torchvision engine's anchor j at a feature position
    (the same on every level, since the head is shared). Read off the engine's anchor generator at
    position (0, 0) and matched on (width, height) to Detectron2's cell anchors within 1 px (so a
    generator that rounds anchor corners to integers, like torchvision's own, still matches)."""
    from torchvision.models.detection.image_list import ImageList

    from detco_bench.engines.torchvision.models.anchors import anchor_generator

    s = _settings(cfg)
    kind = "c4" if family in C4_FAMILIES else "retinanet" if family == "retinanet" else "rcnn_fpn"
    strides = ANCHOR_STRIDES[kind]
    levels = len(strides)
    generator = anchor_generator(s, strides)
    feats = [torch.zeros(1, 1, 1, 1) for _ in range(levels)]
    engine = generator(ImageList(torch.zeros(1, 3, 1, 1), [(1, 1)]), feats)[0].reshape(levels, -1, 4)
    wh = torch.stack([engine[..., 2] - engine[..., 0], engine[..., 3] - engine[..., 1]], dim=-1).double()
    d2 = torch.tensor(_d2_cell_sizes(s, levels), dtype=torch.float64)
    if d2.shape != wh.shape:
        raise ValueError(f"{family}: {tuple(wh.shape[:2])} engine anchors vs Detectron2's {tuple(d2.shape[:2])}")
    perms = []
    for level in range(levels):
        cost = (wh[level][:, None, :] - d2[level][None, :, :]).abs().sum(-1)
        best = cost.argmin(dim=1)
        if sorted(best.tolist()) != list(range(len(best))) or bool((cost.min(dim=1).values > 2.0).any()):
            raise ValueError(f"{family}: the engine's anchors on level {level} are not Detectron2's {d2[level]}")
        perms.append(best.tolist())
    if any(p != perms[0] for p in perms):
        raise ValueError(f"{family}: the engine orders the anchors of a position differently per level: {perms}")
    return perms[0]


def _permute_blocks(t: Tensor, perm: list[int]) -> Tensor:
    a = len(perm)
    if t.shape[0] % a:
        raise ValueError(f"{t.shape[0]} output rows do not split into {a} anchors")
    return t.reshape(a, t.shape[0] // a, *t.shape[1:])[perm].reshape(t.shape)


def _relayout(kind: str, name: str, t: Tensor, to_tv: bool, k: int, perm: list[int] | None) -> Tensor:
    """`t` (the source tensor `name`) in the other engine's layout; k: the number of classes."""
    if kind == SAME:
        return t
    if kind == ANCHORS:
        assert perm is not None
        return _permute_blocks(t, perm if to_tv else sorted(range(len(perm)), key=perm.__getitem__))
    rows, fg_block = {CLASSES: (k + 1, 1), BOX_DELTAS: (4 * k, 4), MASKS: (k, 1)}[kind]
    if not to_tv:
        rows += fg_block if kind != CLASSES else 0
    if t.shape[0] != rows:
        raise ValueError(f"{name}: {t.shape[0]} rows, expected {rows} for {k} classes (MODEL.ROI_HEADS.NUM_CLASSES)")
    if kind == CLASSES:  # background last (Detectron2) <-> first (torchvision)
        return torch.cat([t[-1:], t[:-1]]) if to_tv else torch.cat([t[1:], t[:1]])
    # the background block torchvision carries in front: zeros one way, dropped the other
    return torch.cat([t.new_zeros((fg_block, *t.shape[1:])), t]) if to_tv else t[fg_block:]


def _derived(family: str, s: Settings) -> dict[str, Tensor]:
    """torchvision-engine buffers that come from the config, not from training."""
    if family != "cityscapes_sem":
        return {}
    return {
        key: torch.tensor([float(v) / 255 for v in s.list(cfg_key)]).view(-1, 1, 1)
        for key, cfg_key in (("mean", "MODEL.PIXEL_MEAN"), ("std", "MODEL.PIXEL_STD"))
    }


def _frozen_counter_prefixes(family: str, s: Settings) -> tuple[str, ...]:
    """The Detectron2 backbone stages whose BatchNorms FREEZE_AT freezes: Detectron2's FrozenBN
    conversion keeps each BN's ``num_batches_tracked``, torchvision's FrozenBatchNorm2d has none.
    Those counters (unused) are dropped on the way to the engine and re-created as 0 on the way back."""
    if str(s["MODEL.RESNETS.NORM"]) not in ("BN", *SYNC_BN_NAMES):
        return ()
    base = "backbone." if family in (*C4_FAMILIES, "cityscapes_sem") else "backbone.bottom_up."
    freeze = s.int("MODEL.BACKBONE.FREEZE_AT")
    return (*([f"{base}stem."] if freeze >= 1 else []), *(f"{base}res{k}." for k in range(2, min(freeze, 5) + 1)))


def _convert(state: Mapping[str, Tensor], family: str, cfg: Config, to_tv: bool) -> dict[str, Tensor]:
    s = _settings(cfg)
    rules = family_rules(family, s)
    derived = _derived(family, s)
    k = s.int("MODEL.ROI_HEADS.NUM_CLASSES") if family not in ("retinanet", "cityscapes_sem") else 0
    perm = anchor_order(family, s) if family != "cityscapes_sem" else None
    frozen = _frozen_counter_prefixes(family, s)
    out: dict[str, Tensor] = dict(derived) if to_tv else {}
    source_of: dict[str, str] = {}
    unmatched = []
    for name, value in state.items():
        if to_tv and name.startswith(frozen) and name.endswith(f".norm.{_COUNTER}"):
            continue
        if not to_tv and name in derived:
            if value.shape != derived[name].shape or not torch.allclose(value.float(), derived[name], atol=1e-6):
                raise ValueError(
                    f"{name} {value.flatten().tolist()} is not the config's {derived[name].flatten().tolist()}"
                )
            continue
        hits = [(rule, target) for rule in rules if (target := rule.rename(name, to_tv)) is not None]
        if not hits:
            unmatched.append(name)
            continue
        if len(hits) > 1:
            raise ValueError(f"{name} matches several {family} rules: {[h[1] for h in hits]}")
        rule, target = hits[0]
        if target in out:
            raise ValueError(f"{name} and {source_of.get(target, 'a derived key')} both map to {target}")
        out[target] = _relayout(rule.kind, name, value, to_tv, k, perm)
        source_of[target] = name
    if unmatched:
        side = "Detectron2" if to_tv else "torchvision-engine"
        raise ValueError(f"{len(unmatched)} {side} keys have no {family} rule: {unmatched[:8]}")
    if not to_tv:
        for name in [n for n in out if n.startswith(frozen) and n.endswith(".norm.running_mean")]:
            out.setdefault(name.removesuffix("running_mean") + _COUNTER, torch.tensor(0, dtype=torch.int64))
    return out


def detectron2_to_torchvision(state: Mapping[str, Tensor], family: str, cfg: Config) -> dict[str, Tensor]:
    """The torchvision-engine state dict of the Detectron2 `state` (a model of `family` built from
    the effective config `cfg`: a nested dict such as ``plan.config``, a detectron2 CfgNode, or a
    `Settings`)."""
    return _convert(state, family, cfg, to_tv=True)


def torchvision_to_detectron2(state: Mapping[str, Tensor], family: str, cfg: Config) -> dict[str, Tensor]:
    """The Detectron2 state dict of the torchvision-engine `state` (the inverse of
    `detectron2_to_torchvision`; torchvision's unused background box / mask rows are dropped)."""
    return _convert(state, family, cfg, to_tv=False)


# --------------------------------------------------------------------------------------------
# Checkpoint files


def read_model_state(path: str | Path) -> dict[str, Tensor]:
    """The model state dict in a checkpoint file: ``{"model": ...}`` (Detectron2's checkpointer and
    ours) or a bare state dict. Tensors only (``weights_only`` loading)."""
    return _model_state(torch.load(Path(path), map_location="cpu", weights_only=True), path)


def _model_state(data: Any, path: str | Path) -> dict[str, Tensor]:
    if isinstance(data, dict) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path}: neither a model checkpoint ({{'model': state_dict}}) nor a state dict")
    return dict(data)


#: Name prefixes only Detectron2's models have (every family has at least one).
_D2_ONLY = (
    "proposal_generator.",
    "backbone.bottom_up.",
    "backbone.stem.",
    "roi_heads.res5.",
    "sem_seg_head.",
    "head.cls_subnet.",
)


def checkpoint_engine(path: str | Path) -> str:
    """Which engine wrote the model checkpoint at `path`: "torchvision" (our format marker, or
    torchvision-engine names) or "detectron2" (Detectron2's names). For the Detectron2 engine, which
    must `export_detectron2_checkpoint` a torchvision-engine file before MODEL.WEIGHTS can read it."""
    from detco_bench.engines.torchvision.train.checkpoint import CHECKPOINT_FORMAT

    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return TORCHVISION
    names = _model_state(data, path)
    return DETECTRON2 if any(k.removeprefix("module.").startswith(_D2_ONLY) for k in names) else TORCHVISION


def _reconcile_bn_counters(state: dict[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """BatchNorm's ``num_batches_tracked`` counters (unused in eval, absent from FrozenBN) follow
    the target model: a checkpoint trained with other FREEZE_AT / norm settings still loads."""
    out = {k: v for k, v in state.items() if not k.endswith(_COUNTER) or k in target}
    for k, v in target.items():
        if k.endswith(_COUNTER) and k not in out:
            out[k] = v.clone()
    return out


def load_engine_weights(model: nn.Module, path: str | Path, family: str, cfg: Config) -> str:
    """Load the model weights of either engine's checkpoint at `path` into the torchvision-engine
    `model` (of `family`, built from `cfg`); returns the engine whose names the file used
    ("torchvision" or "detectron2"). Every tensor must find its place (strict loading)."""
    state = read_model_state(path)
    target = model.state_dict()
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    engine = TORCHVISION
    if not {k for k in plain if not k.endswith(_COUNTER)} - set(target):
        mapped = plain
        for key, value in _derived(family, _settings(cfg)).items():  # config buffers stay the config's
            if key in mapped and not torch.allclose(mapped[key].float(), value, atol=1e-6):
                raise ValueError(f"{path}: {key} {mapped[key].flatten().tolist()} is not the config's")
    else:
        engine = DETECTRON2
        mapped = detectron2_to_torchvision(plain, family, cfg)
    mapped = _reconcile_bn_counters(mapped, target)
    missing, unexpected = sorted(set(target) - set(mapped)), sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"{path} ({engine} names) does not fit the {family} model: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    model.load_state_dict(mapped, strict=True)
    return engine


def export_detectron2_checkpoint(src: str | Path, dst: str | Path, family: str, cfg: Config) -> Path:
    """Write the torchvision-engine checkpoint `src` as a Detectron2 checkpoint at `dst`
    (``{"model": state_dict}``, what DetectionCheckpointer loads through MODEL.WEIGHTS)."""
    from pretrain.atomic import atomic_torch_save

    state = torchvision_to_detectron2(read_model_state(src), family, cfg)
    dst = Path(dst)
    atomic_torch_save(dst, {"model": state, "__author__": "detco-bench torchvision engine"})
    return dst
