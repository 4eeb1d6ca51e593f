"""The backbones: our ResNet weights in a torchvision ResNet (Detectron2's FREEZE_AT and res5
dilation), its res4 trunk (Detectron2's C4 backbone) and the FPN on top of it."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from detco_bench.engines.torchvision.models.layers import freeze_batchnorm, norm_factory
from detco_bench.engines.torchvision.settings import Settings


def build_resnet(
    arch: str,
    state_dict: dict[str, Tensor] | None,
    norm: str = "BN",
    freeze_at: int = 0,
    res5_dilation: int = 1,
) -> torchvision.models.ResNet:
    """A torchvision ResNet with our weights (torchvision naming, no fc), `norm` everywhere.

    freeze_at: Detectron2's FREEZE_AT (0: every stage trains; 1: the stem is frozen; k: the stem and
    res2..res<k> are frozen, their norms become FrozenBatchNorm2d). res5_dilation 2 gives res5 stride
    1 and dilation 2 in every res5 block (also the first, as Detectron2 does; torchvision alone
    leaves the first block undilated).
    """
    factory = norm_factory(norm)
    if factory is None:
        raise ValueError("the ResNet trunk needs a norm (MODEL.RESNETS.NORM)")
    builder = getattr(torchvision.models, arch, None)
    if builder is None or not arch.startswith("resnet"):
        raise ValueError(f"unknown ResNet arch {arch!r}")
    kwargs: dict[str, Any] = {"weights": None, "norm_layer": factory}
    if res5_dilation not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")
    if res5_dilation == 2:
        kwargs["replace_stride_with_dilation"] = [False, False, True]
    resnet = builder(**kwargs)
    if res5_dilation == 2:
        first = resnet.layer4[0]
        first.conv2.dilation, first.conv2.padding = (2, 2), (2, 2)
    if state_dict is not None:
        result = resnet.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"backbone weights do not fit {arch}: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
            )
    resnet.fc = nn.Identity()
    if freeze_at > 0:
        stem = nn.ModuleList([resnet.conv1, resnet.bn1])
        for p in stem.parameters():
            p.requires_grad_(False)
        resnet.bn1 = freeze_batchnorm(resnet.bn1)
        for i in range(1, min(freeze_at, 5)):
            layer = getattr(resnet, f"layer{i}")
            for p in layer.parameters():
                p.requires_grad_(False)
            setattr(resnet, f"layer{i}", freeze_batchnorm(layer))
    return resnet


def resnet_from_settings(s: Settings, arch: str, state: dict[str, Tensor] | None) -> torchvision.models.ResNet:
    """`build_resnet` with MODEL.RESNETS.NORM, MODEL.BACKBONE.FREEZE_AT and MODEL.RESNETS.RES5_DILATION."""
    return build_resnet(
        arch,
        state,
        norm=str(s["MODEL.RESNETS.NORM"]),
        freeze_at=s.int("MODEL.BACKBONE.FREEZE_AT"),
        res5_dilation=s.int("MODEL.RESNETS.RES5_DILATION"),
    )


def stage_channels(resnet: torchvision.models.ResNet) -> list[int]:
    """Output channels of layer1..layer4."""
    out = []
    for i in range(1, 5):
        block = getattr(resnet, f"layer{i}")[-1]
        conv = getattr(block, "conv3", None) or block.conv2
        out.append(conv.out_channels)
    return out


class C4Trunk(nn.Sequential):
    """The res4 trunk (stem, res2, res3, res4) of a ResNet: Detectron2's C4 backbone, stride 16."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__(
            OrderedDict(
                conv1=resnet.conv1,
                bn1=resnet.bn1,
                relu=resnet.relu,
                maxpool=resnet.maxpool,
                layer1=resnet.layer1,
                layer2=resnet.layer2,
                layer3=resnet.layer3,
            )
        )
        self.out_channels = stage_channels(resnet)[2]


def fpn_backbone(
    resnet: torchvision.models.ResNet, s: Settings, returned: list[int], extra: nn.Module
) -> BackboneWithFPN:
    """The FPN (MODEL.FPN.OUT_CHANNELS, MODEL.FPN.NORM) on layer<k> for k in `returned`, with `extra`
    levels (max-pool P6 for R-CNN, P6/P7 from C5 for RetinaNet); output maps "0", "1", ... and "pool"
    / "p6", "p7"."""
    channels = stage_channels(resnet)
    fpn = BackboneWithFPN(
        resnet,
        {f"layer{k}": str(i) for i, k in enumerate(returned)},
        [channels[k - 1] for k in returned],
        s.int("MODEL.FPN.OUT_CHANNELS"),
        extra_blocks=extra,
        norm_layer=norm_factory(str(s["MODEL.FPN.NORM"])),
    )
    return fpn
