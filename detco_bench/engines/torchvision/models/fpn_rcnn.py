"""``fpn`` / ``cityscapes_inst`` / ``keypoint``: Mask R-CNN and Keypoint R-CNN on R-FPN."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detco_bench.engines.torchvision.models.anchors import anchor_generator
from detco_bench.engines.torchvision.models.backbones import fpn_backbone, resnet_from_settings
from detco_bench.engines.torchvision.models.layers import c2_msra_fill, c2_xavier_fill
from detco_bench.engines.torchvision.models.poolers import D2RoIPooler
from detco_bench.engines.torchvision.models.roi_heads import D2RoIHeads, box_predictor, mask_predictor, roi_heads_kwargs
from detco_bench.engines.torchvision.models.rpn import rpn_from_settings
from detco_bench.engines.torchvision.models.transform import transform_from_settings
from detco_bench.engines.torchvision.settings import Settings


def build_fpn_rcnn(
    s: Settings,
    arch: str,
    state: dict[str, Tensor] | None,
    num_classes: int,
    mask: bool,
    num_keypoints: int | None = None,
) -> GeneralizedRCNN:
    """Mask R-CNN R-FPN (`mask`), Faster R-CNN R-FPN, or Keypoint R-CNN R-FPN (`num_keypoints`): P2-P6,
    anchors per level, the 2-FC box head, the 4-conv mask head, the keypoint head (CONV_DIMS)."""
    resnet = resnet_from_settings(s, arch, state)
    backbone = fpn_backbone(resnet, s, [1, 2, 3, 4], LastLevelMaxPool())
    anchors = anchor_generator(s, [4, 8, 16, 32, 64])
    rpn = rpn_from_settings(s, backbone.out_channels, anchors)
    names, strides = ["0", "1", "2", "3"], [4, 8, 16, 32]
    res = s.int("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION")
    box_pool = D2RoIPooler(names, strides, res, s.int("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"))
    num_fc = s.int("MODEL.ROI_BOX_HEAD.NUM_FC")
    if num_fc != 2:
        raise ValueError(f"the torchvision engine builds the 2-FC box head of FPN (MODEL.ROI_BOX_HEAD.NUM_FC {num_fc})")
    fc_dim = s.int("MODEL.ROI_BOX_HEAD.FC_DIM")
    box_head = TwoMLPHead(backbone.out_channels * res * res, fc_dim)
    for fc in (box_head.fc6, box_head.fc7):
        c2_xavier_fill(fc)
    kwargs: dict[str, Any] = {}
    if mask:
        mres = s.int("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION")
        dim = s.int("MODEL.ROI_MASK_HEAD.CONV_DIM")
        mask_head = MaskRCNNHeads(backbone.out_channels, [dim] * s.int("MODEL.ROI_MASK_HEAD.NUM_CONV"), 1)
        for m in mask_head.modules():
            if isinstance(m, nn.Conv2d):
                c2_msra_fill(m)
        kwargs.update(
            mask_roi_pool=D2RoIPooler(names, strides, mres, s.int("MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO")),
            mask_head=mask_head,
            mask_predictor=mask_predictor(dim, num_classes, dim),
        )
    if num_keypoints:
        kres = s.int("MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION")
        dims = [int(d) for d in s.list("MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS")]
        kwargs.update(
            keypoint_roi_pool=D2RoIPooler(
                names, strides, kres, s.int("MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO")
            ),
            keypoint_head=KeypointRCNNHeads(backbone.out_channels, dims),
            keypoint_predictor=KeypointRCNNPredictor(dims[-1], num_keypoints),
        )
    heads = D2RoIHeads(box_pool, box_head, box_predictor(fc_dim, num_classes), **kwargs, **roi_heads_kwargs(s))
    return GeneralizedRCNN(backbone, rpn, heads, transform_from_settings(s, 32))
