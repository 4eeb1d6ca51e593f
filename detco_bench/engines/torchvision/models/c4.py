"""``c4`` / ``voc_c4``: Faster / Mask R-CNN C4, Detectron2's Res5ROIHeads with the extra norm
(Res5ROIHeadsExtraNorm)."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from detco_bench.engines.torchvision.models.anchors import anchor_generator
from detco_bench.engines.torchvision.models.backbones import C4Trunk, resnet_from_settings, stage_channels
from detco_bench.engines.torchvision.models.layers import NormFactory, norm_factory
from detco_bench.engines.torchvision.models.poolers import D2RoIPooler
from detco_bench.engines.torchvision.models.roi_heads import D2RoIHeads, box_predictor, mask_predictor, roi_heads_kwargs
from detco_bench.engines.torchvision.models.rpn import rpn_from_settings
from detco_bench.engines.torchvision.models.transform import transform_from_settings
from detco_bench.engines.torchvision.settings import Settings


class Res5Head(nn.Module):
    """res5 (layer4) applied to 14x14 RoI features, then the extra norm of Res5ROIHeadsExtraNorm."""

    def __init__(self, layer4: nn.Module, channels: int, norm: NormFactory | None) -> None:
        super().__init__()
        self.res5 = layer4
        self.norm = norm(channels) if norm is not None else nn.Identity()
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """x: [R, C4, P, P] pooled res4 features -> [R, C5, P/2, P/2] res5 features after the extra norm."""
        return self.norm(self.res5(x))


def build_c4(s: Settings, arch: str, state: dict[str, Tensor] | None, num_classes: int, mask: bool) -> GeneralizedRCNN:
    """Faster R-CNN C4 (`mask` False, ``voc_c4``) or Mask R-CNN C4 (``c4``): the res4 trunk, an RPN on
    res4 with one anchor level, and Res5ROIHeads (RoIAlign at stride 16 -> res5 + extra norm)."""
    resnet = resnet_from_settings(s, arch, state)
    trunk = C4Trunk(resnet)
    anchors = anchor_generator(s, [16])
    rpn = rpn_from_settings(s, trunk.out_channels, anchors)
    res5_channels = stage_channels(resnet)[3]
    res5 = Res5Head(resnet.layer4, res5_channels, norm_factory(str(s["MODEL.RESNETS.NORM"])))
    pooler = D2RoIPooler(
        ["0"], [16], s.int("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"), s.int("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO")
    )
    heads = D2RoIHeads(
        pooler,
        res5,
        box_predictor(res5_channels, num_classes),
        shared_res5=True,
        # Res5ROIHeads' mask branch runs on the box branch's res5 features (D2RoIHeads.shared_res5):
        # the pooler and res5 are the box branch's; the placeholders only switch the branch on.
        mask_roi_pool=nn.Identity() if mask else None,
        mask_head=nn.Identity() if mask else None,
        mask_predictor=mask_predictor(res5_channels, num_classes, s.int("MODEL.ROI_MASK_HEAD.CONV_DIM"))
        if mask
        else None,
        **roi_heads_kwargs(s),
    )
    return GeneralizedRCNN(trunk, rpn, heads, transform_from_settings(s, 0))
