"""The model components detectron2 does not have: MoCo's C4 RoI head and the FCN-16s-style
semantic segmentation head, registered in detectron2's registries by `register_components`."""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn
from torch.nn import functional as F


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads with an extra norm layer after the res5 stage (MoCo, Sec. 4.2: the C4 head's
    res5 ends with BN, since the backbone's outputs are normalized by BN)."""

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode) -> tuple[nn.Sequential, int]:
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


class FCNDilatedHead(nn.Module):
    """FCN-16s-style head: NUM_CONVS x (3x3 conv, CONVS_DIM channels, dilation DILATION, norm,
    ReLU) on the single input feature, a 1x1 conv to NUM_CLASSES, logits upsampled by COMMON_STRIDE
    (bilinear) and cropped to the padded input; cross-entropy ignoring IGNORE_VALUE."""

    def __init__(self, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> None:
        super().__init__()
        head = cfg.MODEL.SEM_SEG_HEAD
        if len(head.IN_FEATURES) != 1:
            raise ValueError(f"FCNDilatedHead takes one feature map, got {head.IN_FEATURES}")
        self.in_feature = head.IN_FEATURES[0]
        self.common_stride = head.COMMON_STRIDE
        self.ignore_value = head.IGNORE_VALUE
        self.loss_weight = head.LOSS_WEIGHT
        channels = input_shape[self.in_feature].channels
        convs = []
        for i in range(head.NUM_CONVS):
            conv = Conv2d(
                channels if i == 0 else head.CONVS_DIM,
                head.CONVS_DIM,
                kernel_size=3,
                padding=head.DILATION,
                dilation=head.DILATION,
                bias=not head.NORM,
                norm=get_norm(head.NORM, head.CONVS_DIM),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(conv)
            convs.append(conv)
        self.convs = nn.Sequential(*convs)
        self.predictor = Conv2d(head.CONVS_DIM if convs else channels, head.NUM_CLASSES, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(
        self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """features: the backbone's maps ([N, C, H/16, W/16] for IN_FEATURES[0]); targets: [N, H, W]
        int64 train ids of the padded batch (training). Returns ([N, NUM_CLASSES, H, W] logits, {})
        in inference, (None, {"loss_sem_seg"}) in training."""
        x = self.predictor(self.convs(features[self.in_feature]))
        x = F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        if self.training:
            assert targets is not None
            x = x[..., : targets.shape[-2], : targets.shape[-1]]
            loss = F.cross_entropy(x, targets, reduction="mean", ignore_index=self.ignore_value)
            return None, {"loss_sem_seg": loss * self.loss_weight}
        return x, {}


def register_components() -> None:
    """Register Res5ROIHeadsExtraNorm and FCNDilatedHead in detectron2's registries, by their class
    names (the configs' ROI_HEADS.NAME / SEM_SEG_HEAD.NAME). Idempotent: a name already registered
    is left as it is (importing this module registers nothing)."""
    for registry, component in ((ROI_HEADS_REGISTRY, Res5ROIHeadsExtraNorm), (SEM_SEG_HEADS_REGISTRY, FCNDilatedHead)):
        if component.__name__ not in registry:
            registry.register(component)

