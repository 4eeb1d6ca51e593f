"""The model of a task family: the entry point of `models`."""

from __future__ import annotations

from torch import Tensor, nn

from detco_bench.engines.torchvision.models.c4 import build_c4
from detco_bench.engines.torchvision.models.fpn_rcnn import build_fpn_rcnn
from detco_bench.engines.torchvision.models.retinanet import build_retinanet
from detco_bench.engines.torchvision.models.semantic import FCNSemSeg
from detco_bench.engines.torchvision.settings import Settings
from detco_bench.tasks import FAMILIES
from detco_bench.transfer_config import SYNC_BN_NAMES


def build_model(
    family: str,
    settings: Settings,
    arch: str,
    backbone_state: dict[str, Tensor] | None,
    *,
    num_classes: int,
    num_keypoints: int | None = None,
) -> nn.Module:
    """The model of a task family on `arch` with `backbone_state` (torchvision ResNet naming; None
    for a random initialisation). Sets ``model.label_offset`` (1 when label 0 is background)."""
    s = settings
    mask = bool(s["MODEL.MASK_ON"])
    if family in ("c4", "voc_c4"):
        model: nn.Module = build_c4(s, arch, backbone_state, num_classes, mask)
        offset = 1
    elif family in ("fpn", "cityscapes_inst"):
        model = build_fpn_rcnn(s, arch, backbone_state, num_classes, mask)
        offset = 1
    elif family == "keypoint":
        if not num_keypoints:
            raise ValueError("a keypoint model needs num_keypoints")
        model = build_fpn_rcnn(s, arch, backbone_state, num_classes, mask, num_keypoints=num_keypoints)
        offset = 1
    elif family == "retinanet":
        model = build_retinanet(s, arch, backbone_state, num_classes)
        offset = 0
    elif family == "cityscapes_sem":
        model = FCNSemSeg(s, arch, backbone_state)
        offset = 0
    else:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILIES)}")
    model.label_offset = offset  # type: ignore[assignment]
    model.family = family  # type: ignore[assignment]
    return model


def uses_sync_bn(settings: Settings) -> bool:
    """Whether the config asks for synchronized BN anywhere (backbone, FPN or heads)."""
    keys = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.SEM_SEG_HEAD.NORM")
    return any(str(settings.get(k, "")) in SYNC_BN_NAMES for k in keys)
