"""detectron2's own ResNet backbone, the stronger reference of the verification where detectron2 is
importable. detectron2 is optional, so it is only ever imported inside these functions."""

from __future__ import annotations

import torch

from detco_bench.checkpoints.archs import ARCHS, STAGES
from detco_bench.checkpoints.messages import one_line


def detectron2_import_error() -> str | None:
    """None when detectron2's ResNet backbone can be imported, else why not (one line)."""
    try:
        import detectron2.modeling.backbone.resnet  # noqa: F401
        from detectron2.config import get_cfg  # noqa: F401
    except Exception as exc:  # ImportError, or its own import-time failures (pkg_resources ...)
        return f"{type(exc).__name__}: {one_line(str(exc), 120)}"
    return None


def build_detectron2_resnet(arch: str) -> torch.nn.Module:
    """detectron2's ResNet backbone as the transfer configs build it (needs detectron2):
    DEPTH from `arch`, STRIDE_IN_1X1=False, NORM="BN", FREEZE_AT=0, res2..res5 out, eval mode."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    spec = ARCHS[arch]
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = spec.depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if spec.block == "basic" else 256
    cfg.MODEL.RESNETS.RES5_DILATION = 1
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
