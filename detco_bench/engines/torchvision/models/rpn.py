"""The region proposal network with Detectron2's loss."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from detco_bench.engines.torchvision.models.anchors import D2AnchorGenerator
from detco_bench.engines.torchvision.models.box_coder import D2BoxCoder
from detco_bench.engines.torchvision.settings import Settings


class D2RPN(RegionProposalNetwork):
    """torchvision's RPN with Detectron2's loss: smooth-L1 with SMOOTH_L1_BETA (0 = L1) on the
    positives, binary cross-entropy on the sampled anchors, both summed and divided by
    BATCH_SIZE_PER_IMAGE x images."""

    smooth_l1_beta: float = 0.0

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """objectness: [A] logits and pred_bbox_deltas: [A, 4] over every anchor of the batch; labels /
        regression_targets: per image [A_i] (1 fg, 0 bg, -1 ignored) / [A_i, 4]. Returns (objectness
        loss, box loss), each a scalar."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        normalizer = float(self.fg_bg_sampler.batch_size_per_image * len(labels))
        objectness = objectness.flatten()
        all_labels = torch.cat(labels, dim=0)
        targets = torch.cat(regression_targets, dim=0)
        box_loss = (
            F.smooth_l1_loss(pred_bbox_deltas[pos], targets[pos], beta=self.smooth_l1_beta, reduction="sum")
            / normalizer
        )
        objectness_loss = (
            F.binary_cross_entropy_with_logits(objectness[sampled], all_labels[sampled], reduction="sum") / normalizer
        )
        return objectness_loss, box_loss


def rpn_from_settings(s: Settings, in_channels: int, anchors: D2AnchorGenerator) -> D2RPN:
    """The RPN of the config (MODEL.RPN.*) on `in_channels` feature maps with `anchors`."""
    lo, hi = (float(v) for v in s.list("MODEL.RPN.IOU_THRESHOLDS"))
    rpn = D2RPN(
        anchors,
        RPNHead(in_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=hi,
        bg_iou_thresh=lo,
        batch_size_per_image=s.int("MODEL.RPN.BATCH_SIZE_PER_IMAGE"),
        positive_fraction=s.float("MODEL.RPN.POSITIVE_FRACTION"),
        pre_nms_top_n={
            "training": s.int("MODEL.RPN.PRE_NMS_TOPK_TRAIN"),
            "testing": s.int("MODEL.RPN.PRE_NMS_TOPK_TEST"),
        },
        post_nms_top_n={
            "training": s.int("MODEL.RPN.POST_NMS_TOPK_TRAIN"),
            "testing": s.int("MODEL.RPN.POST_NMS_TOPK_TEST"),
        },
        nms_thresh=s.float("MODEL.RPN.NMS_THRESH"),
    )
    rpn.smooth_l1_beta = s.float("MODEL.RPN.SMOOTH_L1_BETA")
    rpn.box_coder = D2BoxCoder(rpn.box_coder.weights)
    return rpn

