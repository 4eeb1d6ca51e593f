"""RoI heads with Detectron2's box loss, mask targets (`mask_targets`), keypoint RoIs and
Res5ROIHeads' shared res5, and the predictors with Detectron2's initialisations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    keypointrcnn_inference,
    keypointrcnn_loss,
    maskrcnn_inference,
)

from detco_bench.engines.torchvision.models.box_coder import D2BoxCoder
from detco_bench.engines.torchvision.models.layers import c2_msra_fill
from detco_bench.engines.torchvision.models.mask_targets import mask_loss
from detco_bench.engines.torchvision.settings import Settings


def visible_keypoint_proposals(
    proposals: list[Tensor], matched: list[Tensor], gt_keypoints: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Detectron2's select_proposals_with_visible_keypoints: per image, of the foreground proposals
    [R_i, 4] (matched to GT indices [R_i]), those whose GT has a keypoint of visibility >= 1 inside
    the box (borders included). gt_keypoints: per image [G_i, K, 3]."""
    kept_props, kept_matched = [], []
    for props, idx, kps in zip(proposals, matched, gt_keypoints, strict=True):
        if len(props) == 0:
            kept_props.append(props)
            kept_matched.append(idx)
            continue
        kp = kps[idx]  # [R, K, 3]
        x, y = kp[..., 0], kp[..., 1]
        inside = (
            (x >= props[:, None, 0]) & (x <= props[:, None, 2]) & (y >= props[:, None, 1]) & (y <= props[:, None, 3])
        )
        keep = torch.where((inside & (kp[..., 2] >= 1)).any(dim=1))[0]
        kept_props.append(props[keep])
        kept_matched.append(idx[keep])
    return kept_props, kept_matched


class D2RoIHeads(RoIHeads):
    """torchvision's RoIHeads with Detectron2's box loss (smooth-L1 with SMOOTH_L1_BETA, 0 = L1), mask
    targets (`mask_targets.mask_loss`: polygons rasterised per RoI, or aligned RoIAlign of the
    bitmask >= 0.5) and keypoint RoIs (only foreground proposals with a visible keypoint inside) and,
    with ``shared_res5``, Detectron2's Res5ROIHeads: the box head returns the res5 feature map, the
    box predictor sees its spatial mean, and the mask branch of training reuses the res5 features of
    the foreground RoIs (at test time res5 runs again on the detected boxes)."""

    def __init__(self, *args: Any, box_smooth_l1_beta: float = 0.0, shared_res5: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.box_coder = D2BoxCoder(self.box_coder.weights)
        self.box_smooth_l1_beta = float(box_smooth_l1_beta)
        self.shared_res5 = shared_res5

    def _box_loss(
        self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """class_logits: [R, K + 1]; box_regression: [R, (K + 1) * 4]; per image labels [R_i] and
        regression targets [R_i, 4]. Cross-entropy, and the box loss of the foreground RoIs summed
        and divided by all sampled RoIs (Detectron2's normalisation)."""
        labels_t = torch.cat(labels, dim=0)
        targets_t = torch.cat(targets, dim=0)
        loss_cls = F.cross_entropy(class_logits, labels_t)
        pos = torch.where(labels_t > 0)[0]
        labels_pos = labels_t[pos]
        n = class_logits.shape[0]
        box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
        loss_box = F.smooth_l1_loss(
            box_regression[pos, labels_pos], targets_t[pos], beta=self.box_smooth_l1_beta, reduction="sum"
        ) / max(labels_t.numel(), 1)
        return loss_cls, loss_box

    def _predict(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        if self.shared_res5:
            return self.box_predictor(box_features.mean(dim=(2, 3)))
        return self.box_predictor(box_features)

    def forward(  # noqa: C901 - mirrors torchvision's RoIHeads.forward
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """features: backbone maps by name; proposals: per image [R_i, 4] XYXY; targets (training):
        per image ``boxes`` [G, 4], ``labels`` [G], ``masks`` [G, H, W] (and the packed polygons of
        `data.polygons`), ``keypoints`` [G, K, 3].

        Returns (detections, losses). Eval: per image ``boxes`` [D, 4], ``labels`` [D], ``scores``
        [D], ``masks`` [D, 1, H, W] probabilities, ``keypoints`` [D, K, 3] and
        ``keypoints_scores`` [D, K]; no losses. Training: no detections; the loss dict."""
        labels: list[Tensor] | None = None
        matched_idxs: list[Tensor] | None = None
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self._predict(box_features)

        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            assert labels is not None
            loss_cls, loss_box = self._box_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        else:
            boxes, scores, pred_labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [
                {"boxes": b, "labels": lb, "scores": s} for b, s, lb in zip(boxes, scores, pred_labels, strict=True)
            ]

        fg_proposals: list[Tensor] = []
        fg_matched: list[Tensor] = []
        if self.training and (self.has_mask() or self.has_keypoint()):
            assert labels is not None and matched_idxs is not None
            for img_labels, img_props, img_matched in zip(labels, proposals, matched_idxs, strict=True):
                pos = torch.where(img_labels > 0)[0]
                fg_proposals.append(img_props[pos])
                fg_matched.append(img_matched[pos])

        if self.has_mask():
            if self.training:
                assert targets is not None and labels is not None
                if self.shared_res5:
                    mask_features = box_features[torch.cat(labels, dim=0) > 0]
                else:
                    mask_features = self.mask_head(self.mask_roi_pool(features, fg_proposals, image_shapes))
                mask_logits = self.mask_predictor(mask_features)
                losses["loss_mask"] = mask_loss(mask_logits, fg_proposals, targets, fg_matched)
            else:
                det_boxes = [r["boxes"] for r in result]
                if self.shared_res5:
                    mask_features = self.box_head(self.box_roi_pool(features, det_boxes, image_shapes))
                else:
                    mask_features = self.mask_head(self.mask_roi_pool(features, det_boxes, image_shapes))
                mask_logits = self.mask_predictor(mask_features)
                for prob, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result, strict=True):
                    r["masks"] = prob

        if self.has_keypoint():
            if self.training:
                assert targets is not None
                gt_keypoints = [t["keypoints"] for t in targets]
                kp_boxes, kp_matched = visible_keypoint_proposals(fg_proposals, fg_matched, gt_keypoints)
            else:
                kp_boxes = [r["boxes"] for r in result]
            kp_features = self.keypoint_head(self.keypoint_roi_pool(features, kp_boxes, image_shapes))
            kp_logits = self.keypoint_predictor(kp_features)
            if self.training:
                losses["loss_keypoint"] = keypointrcnn_loss(kp_logits, kp_boxes, gt_keypoints, kp_matched)
            else:
                probs, kp_scores = keypointrcnn_inference(kp_logits, kp_boxes)
                for prob, sc, r in zip(probs, kp_scores, result, strict=True):
                    r["keypoints"] = prob
                    r["keypoints_scores"] = sc
        return result, losses


def box_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    """Detectron2's FastRCNNOutputLayers initialisation: N(0, 0.01) scores, N(0, 0.001) deltas."""
    predictor = FastRCNNPredictor(in_channels, num_classes + 1)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.constant_(predictor.cls_score.bias, 0)
    nn.init.constant_(predictor.bbox_pred.bias, 0)
    return predictor


def mask_predictor(in_channels: int, num_classes: int, dim: int) -> MaskRCNNPredictor:
    """Deconv 2x2 (MSRA fill) + ReLU + 1x1 logits (N(0, 0.001)), as Detectron2's mask head."""
    predictor = MaskRCNNPredictor(in_channels, dim, num_classes + 1)
    c2_msra_fill(predictor.conv5_mask)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.constant_(predictor.mask_fcn_logits.bias, 0)
    return predictor


def roi_heads_kwargs(s: Settings) -> dict[str, Any]:
    """The RoIHeads arguments of the config: sampling, box coding weights, test thresholds, box loss."""
    iou = float(s.list("MODEL.ROI_HEADS.IOU_THRESHOLDS")[0])
    return {
        "fg_iou_thresh": iou,
        "bg_iou_thresh": iou,
        "batch_size_per_image": s.int("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"),
        "positive_fraction": s.float("MODEL.ROI_HEADS.POSITIVE_FRACTION"),
        "bbox_reg_weights": tuple(float(w) for w in s.list("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS")),
        "score_thresh": s.float("MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
        "nms_thresh": s.float("MODEL.ROI_HEADS.NMS_THRESH_TEST"),
        "detections_per_img": s.int("TEST.DETECTIONS_PER_IMAGE"),
        "box_smooth_l1_beta": s.float("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA"),
    }
