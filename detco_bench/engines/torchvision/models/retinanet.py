"""``retinanet``: RetinaNet on R-FPN P3-P7 (P6 from C5, as Detectron2), with Detectron2's loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detco_bench.engines.torchvision.models.anchors import anchor_generator
from detco_bench.engines.torchvision.models.backbones import fpn_backbone, resnet_from_settings, stage_channels
from detco_bench.engines.torchvision.models.box_coder import D2BoxCoder
from detco_bench.engines.torchvision.models.transform import transform_from_settings
from detco_bench.engines.torchvision.settings import Settings

#: Detectron2's RetinaNet loss normaliser: an EMA of the batch's foreground-anchor count.
NORMALIZER_INIT = 100.0
NORMALIZER_MOMENTUM = 0.9


class D2RetinaNet(RetinaNet):
    """torchvision's RetinaNet with Detectron2's loss: focal loss (FOCAL_LOSS_ALPHA / GAMMA) over the
    non-ignored anchors and smooth-L1 (SMOOTH_L1_LOSS_BETA, 0 = L1) over the foreground anchors,
    both summed over the process's batch and divided by ``loss_normalizer``, an EMA (momentum 0.9,
    starting at 100) of max(1, foreground anchors in the batch), updated at every training forward.

    ``loss_normalizer`` is per-process state, not a parameter: `rank_state` / `load_rank_state` let
    the checkpointer save and restore it for each process, so a resumed run continues exactly. At
    test time the detections are clipped after NMS, as Detectron2 does (`postprocess_detections`).
    """

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 0.0
    loss_normalizer: float = NORMALIZER_INIT

    def rank_state(self) -> dict[str, float]:
        """The per-process training state the checkpoint keeps."""
        return {"loss_normalizer": float(self.loss_normalizer)}

    def load_rank_state(self, state: dict[str, float]) -> None:
        """Restore what `rank_state` returned."""
        self.loss_normalizer = float(state["loss_normalizer"])

    def _match(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """[R] index of the matched GT box, -1 below the low IoU threshold (background), -2 between
        the thresholds (ignored); all background for an image without boxes."""
        if gt_boxes.numel() == 0:
            background = Matcher.BELOW_LOW_THRESHOLD
            return torch.full((anchors.shape[0],), background, dtype=torch.int64, device=anchors.device)
        return self.proposal_matcher(box_ops.box_iou(gt_boxes, anchors))

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        """targets: per image ``boxes`` [G, 4], ``labels`` [G] (0-based); head_outputs: ``cls_logits``
        [N, R, K] and ``bbox_regression`` [N, R, 4]; anchors: per image [R, 4]. Returns the two
        scalar losses, ``classification`` and ``bbox_regression``."""
        logits = head_outputs["cls_logits"]
        deltas = head_outputs["bbox_regression"]
        matched = torch.stack([self._match(t["boxes"], a) for t, a in zip(targets, anchors, strict=True)])
        fg = matched >= 0
        valid = matched != Matcher.BETWEEN_THRESHOLDS
        self.loss_normalizer = NORMALIZER_MOMENTUM * self.loss_normalizer + (1 - NORMALIZER_MOMENTUM) * max(
            int(fg.sum().item()), 1
        )
        cls_target = torch.zeros_like(logits)
        gt_boxes = torch.zeros_like(deltas, dtype=torch.float32)
        for i, t in enumerate(targets):
            idx = matched[i].clamp(min=0)
            if t["boxes"].numel():
                cls_target[i, fg[i], t["labels"][idx[fg[i]]]] = 1.0
                gt_boxes[i] = t["boxes"][idx].float()
        loss_cls = sigmoid_focal_loss(
            logits[valid], cls_target[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        all_anchors = torch.stack(anchors)
        box_target = self.box_coder.encode_single(gt_boxes[fg], all_anchors[fg])
        loss_box = F.smooth_l1_loss(deltas[fg].float(), box_target, beta=self.smooth_l1_beta, reduction="sum")
        return {"classification": loss_cls / self.loss_normalizer, "bbox_regression": loss_box / self.loss_normalizer}

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """head_outputs: per level ``cls_logits`` [N, R_l, K] and ``bbox_regression`` [N, R_l, 4];
        anchors: per image, per level [R_l, 4]. Per level the (anchor, class) pairs whose sigmoid
        score passes SCORE_THRESH_TEST, the TOPK_CANDIDATES_TEST best of them decoded; then per image
        class-wise NMS and the DETECTIONS_PER_IMAGE best. Unlike torchvision, the boxes are not
        clipped before NMS: Detectron2 clips after it (`transform.D2Transform.postprocess`)."""
        detections = []
        for i in range(len(image_shapes)):
            boxes, scores, labels = [], [], []
            levels = zip(head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors[i], strict=True)
            for logits, deltas, level_anchors in levels:
                num_classes = logits.shape[-1]
                prob = torch.sigmoid(logits[i]).flatten()
                candidates = torch.where(prob > self.score_thresh)[0]
                top, order = prob[candidates].topk(min(self.topk_candidates, candidates.numel()))
                candidates = candidates[order]
                anchor_idx = torch.div(candidates, num_classes, rounding_mode="floor")
                boxes.append(self.box_coder.decode_single(deltas[i][anchor_idx], level_anchors[anchor_idx]))
                scores.append(top)
                labels.append(candidates % num_classes)
            image_boxes, image_scores, image_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = box_ops.batched_nms(image_boxes, image_scores, image_labels, self.nms_thresh)
            keep = keep[: self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]})
        return detections


def build_retinanet(s: Settings, arch: str, state: dict[str, Tensor] | None, num_classes: int) -> D2RetinaNet:
    """RetinaNet R-FPN: P3-P7 (P6 / P7 from C5), torchvision's 4-conv head with the PRIOR_PROB bias,
    Detectron2's anchors, IoU thresholds, box coding weights, loss and test-time settings."""
    resnet = resnet_from_settings(s, arch, state)
    c5 = stage_channels(resnet)[3]
    out = s.int("MODEL.FPN.OUT_CHANNELS")
    backbone = fpn_backbone(resnet, s, [2, 3, 4], LastLevelP6P7(c5, out))
    anchors = anchor_generator(s, [8, 16, 32, 64, 128])
    num_convs = s.int("MODEL.RETINANET.NUM_CONVS")
    if num_convs != 4:
        raise ValueError(f"torchvision's RetinaNet head has 4 convs (MODEL.RETINANET.NUM_CONVS {num_convs})")
    head = RetinaNetHead(out, anchors.num_anchors_per_location()[0], num_classes)
    prior = s.float("MODEL.RETINANET.PRIOR_PROB")
    nn.init.constant_(head.classification_head.cls_logits.bias, -math.log((1 - prior) / prior))
    lo, hi = (float(v) for v in s.list("MODEL.RETINANET.IOU_THRESHOLDS"))
    model = D2RetinaNet(
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
    # Detectron2's defaults for the keys Base-Defaults.yaml does not spell out
    model.box_coder = D2BoxCoder(tuple(float(w) for w in s.get("MODEL.RETINANET.BBOX_REG_WEIGHTS", [1.0] * 4)))
    model.focal_alpha = s.float("MODEL.RETINANET.FOCAL_LOSS_ALPHA")
    model.focal_gamma = s.float("MODEL.RETINANET.FOCAL_LOSS_GAMMA")
    model.smooth_l1_beta = s.float("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA")
    loss_type = str(s.get("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "smooth_l1"))
    if loss_type != "smooth_l1":
        raise ValueError(f"the torchvision engine's RetinaNet has a smooth-L1 box loss, not {loss_type}")
    return model
