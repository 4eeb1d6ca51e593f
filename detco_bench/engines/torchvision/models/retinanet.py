"""``retinanet``: RetinaNet on R-FPN P3-P7 (P6 from C5, as Detectron2)."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detco_bench.engines.torchvision.models.backbones import fpn_backbone, resnet_from_settings, stage_channels
from detco_bench.engines.torchvision.models.rpn import anchor_generator
from detco_bench.engines.torchvision.models.transform import transform_from_settings
from detco_bench.engines.torchvision.settings import Settings


def build_retinanet(s: Settings, arch: str, state: dict[str, Tensor] | None, num_classes: int) -> RetinaNet:
    """RetinaNet R-FPN: P3-P7 (P6 / P7 from C5), torchvision's 4-conv head with the PRIOR_PROB bias,
    Detectron2's IoU thresholds and test-time settings."""
    resnet = resnet_from_settings(s, arch, state)
    c5 = stage_channels(resnet)[3]
    out = s.int("MODEL.FPN.OUT_CHANNELS")
    backbone = fpn_backbone(resnet, s, [2, 3, 4], LastLevelP6P7(c5, out))
    anchors = anchor_generator(s, 5)
    num_convs = s.int("MODEL.RETINANET.NUM_CONVS")
    if num_convs != 4:
        raise ValueError(f"torchvision's RetinaNet head has 4 convs (MODEL.RETINANET.NUM_CONVS {num_convs})")
    head = RetinaNetHead(out, anchors.num_anchors_per_location()[0], num_classes)
    prior = s.float("MODEL.RETINANET.PRIOR_PROB")
    nn.init.constant_(head.classification_head.cls_logits.bias, -math.log((1 - prior) / prior))
    lo, hi = (float(v) for v in s.list("MODEL.RETINANET.IOU_THRESHOLDS"))
    model = RetinaNet(
        backbone,
        num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=s.float("MODEL.RETINANET.SCORE_THRESH_TEST"),
        nms_thresh=s.float("MODEL.RETINANET.NMS_THRESH_TEST"),
        detections_per_img=s.int("TEST.DETECTIONS_PER_IMAGE"),
        fg_iou_thresh=hi,
        bg_iou_thresh=lo,
        topk_candidates=s.int("MODEL.RETINANET.TOPK_CANDIDATES_TEST"),
    )
    model.transform = transform_from_settings(s, 32)
    return model
