"""The transfer models, assembled from torchvision parts around our backbone weights.

`build_model(family, settings, arch, backbone_state, num_classes=..., num_keypoints=...)`:

* ``fpn`` / ``cityscapes_inst``: Mask R-CNN R-FPN; ``keypoint``: Keypoint R-CNN R-FPN;
  ``retinanet``: RetinaNet R-FPN (P3-P7, P6 from C5 as in Detectron2).
* ``c4`` (Mask R-CNN) / ``voc_c4`` (Faster R-CNN): Detectron2's Res5ROIHeads rebuilt from torchvision
  parts: the res4 trunk (stem..layer3, 1024 channels) is the backbone, the RPN runs on res4 alone
  (anchors 32..512 x 3 ratios), RoIAlign 14x14 (aligned, stride 16) feeds the res5 stage (layer4)
  followed by the extra norm (Res5ROIHeadsExtraNorm), average-pooled into the box predictor; the
  mask branch reuses the res5 features of the foreground RoIs (deconv 2x2 -> 14x14 masks).
* ``cityscapes_sem``: the FCN-16s-style model of the Detectron2 engine (`FCNDilatedHead`): R50 with
  res5 dilated (every res5 block, dilation 2, stride 16), NUM_CONVS x (3x3 conv, dilation
  DILATION, norm, ReLU), a 1x1 classifier, logits upsampled bilinearly by COMMON_STRIDE.

Every model takes a list of float RGB (or BGR, per INPUT.FORMAT) images in [0, 1]; PIXEL_MEAN /
PIXEL_STD (0-255 units) are divided by 255. Training images arrive already resized by the data
pipeline; at test time the models resize to MIN_SIZE_TEST / MAX_SIZE_TEST themselves (Detectron2's
ResizeShortestEdge rule) and return predictions in the input image's coordinates. The
Detectron2-style pieces (RoIAlign with aligned=True and Detectron2's level assignment, L1 box
losses with SMOOTH_L1_BETA, Detectron2's RPN loss normalisation and initialisations) are small
subclasses here; docs/torchvision_engine.md lists what still differs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    keypointrcnn_inference,
    keypointrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detco_bench.tv_engine.data import shortest_edge_size
from detco_bench.tv_engine.settings import Settings

DETECTION_FAMILIES: tuple[str, ...] = ("c4", "voc_c4", "fpn", "cityscapes_inst", "keypoint", "retinanet")
FAMILIES: tuple[str, ...] = (*DETECTION_FAMILIES, "cityscapes_sem")
SYNC_NORMS = ("SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")

NormFactory = Callable[[int], nn.Module]


# --------------------------------------------------------------------------------------------
# Normalization, initialisation


def norm_factory(name: str) -> NormFactory | None:
    """Detectron2's ``get_norm`` names -> a module factory (None for ""). BN and every synchronized
    variant give trainable `nn.BatchNorm2d`; the engine converts them to `nn.SyncBatchNorm` under DDP
    on GPUs when the config asks for synchronized BN."""
    if not name:
        return None
    if name in ("BN", *SYNC_NORMS):
        return nn.BatchNorm2d
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name == "GN":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"unsupported norm {name!r} (BN, SyncBN, FrozenBN, GN or empty)")


def c2_msra_fill(module: nn.Module) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def _frozen_copy(bn: nn.Module) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.weight.copy_(bn.weight.detach())
    frozen.bias.copy_(bn.bias.detach())
    frozen.running_mean.copy_(bn.running_mean)
    frozen.running_var.copy_(bn.running_var)
    return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced by an equivalent FrozenBatchNorm2d."""
    if isinstance(module, nn.BatchNorm2d):
        return _frozen_copy(module)
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


# --------------------------------------------------------------------------------------------
# ResNet trunk


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


class Res5Head(nn.Module):
    """res5 (layer4) applied to 14x14 RoI features, then the extra norm of Res5ROIHeadsExtraNorm."""

    def __init__(self, layer4: nn.Module, channels: int, norm: NormFactory | None) -> None:
        super().__init__()
        self.res5 = layer4
        self.norm = norm(channels) if norm is not None else nn.Identity()
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.res5(x))


# --------------------------------------------------------------------------------------------
# Detectron2-style detection parts


class D2Transform(GeneralizedRCNNTransform):
    """Normalisation and batching as torchvision does them; resizing as Detectron2 does it.

    Training inputs are already resized (and flipped) by the data pipeline, so nothing is resized;
    at test time the image is resized with Detectron2's ResizeShortestEdge rule (MIN_SIZE_TEST,
    MAX_SIZE_TEST, sizes rounded to the nearest integer, antialiased bilinear), and torchvision's
    postprocess maps boxes, masks and keypoints back to the input image.
    """

    def __init__(
        self, min_size_test: int, max_size_test: int, mean: list[float], std: list[float], size_divisible: int
    ) -> None:
        super().__init__(min_size_test, max_size_test, mean, std, size_divisible=max(1, size_divisible))

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        if self.training:
            return image, target
        short = int(self.min_size[-1])
        if short <= 0:
            return image, target
        h, w = image.shape[-2:]
        size = shortest_edge_size(int(h), int(w), short, int(self.max_size))
        if size != (int(h), int(w)):
            from torchvision.transforms.v2 import functional as TF

            image = TF.resize(image, list(size), antialias=True)
        return image, target


class D2RPN(RegionProposalNetwork):
    """torchvision's RPN with Detectron2's loss: smooth-L1 with SMOOTH_L1_BETA (0 = L1) on the
    positives, binary cross-entropy on the sampled anchors, both summed and divided by
    BATCH_SIZE_PER_IMAGE x images."""

    smooth_l1_beta: float = 0.0

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
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


def _rois(boxes: list[Tensor]) -> Tensor:
    concat = torch.cat(boxes, dim=0)
    ids = torch.cat(
        [torch.full((len(b), 1), i, dtype=concat.dtype, device=concat.device) for i, b in enumerate(boxes)], dim=0
    )
    return torch.cat([ids, concat], dim=1)


class D2RoIPooler(nn.Module):
    """Detectron2's ROIPooler with ROIAlignV2: RoIAlign with aligned=True (half-pixel offset) on
    feature maps of known strides; with several maps, a box of side s goes to level
    floor(4 + log2(s / 224 + 1e-8)) clamped to the available levels."""

    def __init__(
        self,
        featmap_names: list[str],
        strides: list[int],
        output_size: int,
        sampling_ratio: int = 0,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.scales = [1.0 / s for s in strides]
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = int(sampling_ratio)
        self.min_level = int(round(math.log2(strides[0])))
        self.max_level = int(round(math.log2(strides[-1])))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [x[n] for n in self.featmap_names]
        rois = _rois(boxes)
        if len(feats) == 1:
            return roi_align(
                feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio, aligned=True
            )
        sizes = torch.sqrt(torch.cat([box_ops.box_area(b) for b in boxes]))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_box_size + 1e-8))
        levels = (torch.clamp(levels, min=self.min_level, max=self.max_level) - self.min_level).to(torch.int64)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, aligned=True)
                out[idx] = pooled.to(out.dtype)
        return out


class D2RoIHeads(RoIHeads):
    """torchvision's RoIHeads with Detectron2's box loss (smooth-L1 with SMOOTH_L1_BETA, 0 = L1) and,
    with ``shared_res5``, Detectron2's Res5ROIHeads: the box head returns the res5 feature map, the
    box predictor sees its spatial mean, and the mask branch of training reuses the res5 features of
    the foreground RoIs (at test time res5 runs again on the detected boxes)."""

    def __init__(self, *args: Any, box_smooth_l1_beta: float = 0.0, shared_res5: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.box_smooth_l1_beta = float(box_smooth_l1_beta)
        self.shared_res5 = shared_res5

    def _box_loss(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], targets: list[Tensor]):
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
                losses["loss_mask"] = maskrcnn_loss(
                    mask_logits,
                    fg_proposals,
                    [t["masks"] for t in targets],
                    [t["labels"] for t in targets],
                    fg_matched,
                )
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
            kp_boxes = fg_proposals if self.training else [r["boxes"] for r in result]
            kp_features = self.keypoint_head(self.keypoint_roi_pool(features, kp_boxes, image_shapes))
            kp_logits = self.keypoint_predictor(kp_features)
            if self.training:
                assert targets is not None
                losses["loss_keypoint"] = keypointrcnn_loss(
                    kp_logits, fg_proposals, [t["keypoints"] for t in targets], fg_matched
                )
            else:
                probs, kp_scores = keypointrcnn_inference(kp_logits, kp_boxes)
                for prob, sc, r in zip(probs, kp_scores, result, strict=True):
                    r["keypoints"] = prob
                    r["keypoints_scores"] = sc
        return result, losses


def _box_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    """Detectron2's FastRCNNOutputLayers initialisation: N(0, 0.01) scores, N(0, 0.001) deltas."""
    predictor = FastRCNNPredictor(in_channels, num_classes + 1)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.constant_(predictor.cls_score.bias, 0)
    nn.init.constant_(predictor.bbox_pred.bias, 0)
    return predictor


def _mask_predictor(in_channels: int, num_classes: int, dim: int) -> MaskRCNNPredictor:
    """Deconv 2x2 (MSRA fill) + ReLU + 1x1 logits (N(0, 0.001)), as Detectron2's mask head."""
    predictor = MaskRCNNPredictor(in_channels, dim, num_classes + 1)
    c2_msra_fill(predictor.conv5_mask)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.constant_(predictor.mask_fcn_logits.bias, 0)
    return predictor


def _rpn(s: Settings, in_channels: int, anchors: AnchorGenerator) -> D2RPN:
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
    return rpn


def _anchor_generator(s: Settings, levels: int) -> AnchorGenerator:
    sizes = [list(map(float, x)) for x in s.list("MODEL.ANCHOR_GENERATOR.SIZES")]
    ratios = [list(map(float, x)) for x in s.list("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")]
    if len(sizes) == 1 and levels > 1:  # detectron2 broadcasts a single entry to every level
        sizes = sizes * levels
    if len(ratios) == 1:
        ratios = ratios * len(sizes)
    if len(sizes) != levels:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} levels, the model has {levels}")
    return AnchorGenerator(tuple(tuple(x) for x in sizes), tuple(tuple(r) for r in ratios))


def _roi_heads_kwargs(s: Settings) -> dict[str, Any]:
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


def _transform(s: Settings, size_divisible: int) -> D2Transform:
    return D2Transform(
        s.int("INPUT.MIN_SIZE_TEST"),
        s.int("INPUT.MAX_SIZE_TEST"),
        [float(v) / 255.0 for v in s.list("MODEL.PIXEL_MEAN")],
        [float(v) / 255.0 for v in s.list("MODEL.PIXEL_STD")],
        size_divisible,
    )


def _fpn_backbone(
    resnet: torchvision.models.ResNet, s: Settings, returned: list[int], extra: nn.Module
) -> BackboneWithFPN:
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


def _resnet_from(s: Settings, arch: str, state: dict[str, Tensor] | None) -> torchvision.models.ResNet:
    return build_resnet(
        arch,
        state,
        norm=str(s["MODEL.RESNETS.NORM"]),
        freeze_at=s.int("MODEL.BACKBONE.FREEZE_AT"),
        res5_dilation=s.int("MODEL.RESNETS.RES5_DILATION"),
    )


def build_c4(s: Settings, arch: str, state: dict[str, Tensor] | None, num_classes: int, mask: bool) -> GeneralizedRCNN:
    resnet = _resnet_from(s, arch, state)
    trunk = C4Trunk(resnet)
    anchors = _anchor_generator(s, 1)
    rpn = _rpn(s, trunk.out_channels, anchors)
    res5_channels = stage_channels(resnet)[3]
    res5 = Res5Head(resnet.layer4, res5_channels, norm_factory(str(s["MODEL.RESNETS.NORM"])))
    pooler = D2RoIPooler(
        ["0"], [16], s.int("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"), s.int("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO")
    )
    heads = D2RoIHeads(
        pooler,
        res5,
        _box_predictor(res5_channels, num_classes),
        shared_res5=True,
        # Res5ROIHeads' mask branch runs on the box branch's res5 features (D2RoIHeads.shared_res5):
        # the pooler and res5 are the box branch's; the placeholders only switch the branch on.
        mask_roi_pool=nn.Identity() if mask else None,
        mask_head=nn.Identity() if mask else None,
        mask_predictor=_mask_predictor(res5_channels, num_classes, s.int("MODEL.ROI_MASK_HEAD.CONV_DIM"))
        if mask
        else None,
        **_roi_heads_kwargs(s),
    )
    return GeneralizedRCNN(trunk, rpn, heads, _transform(s, 0))


def build_fpn_rcnn(
    s: Settings,
    arch: str,
    state: dict[str, Tensor] | None,
    num_classes: int,
    mask: bool,
    num_keypoints: int | None = None,
) -> GeneralizedRCNN:
    resnet = _resnet_from(s, arch, state)
    backbone = _fpn_backbone(resnet, s, [1, 2, 3, 4], LastLevelMaxPool())
    anchors = _anchor_generator(s, 5)
    rpn = _rpn(s, backbone.out_channels, anchors)
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
            mask_predictor=_mask_predictor(dim, num_classes, dim),
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
    heads = D2RoIHeads(box_pool, box_head, _box_predictor(fc_dim, num_classes), **kwargs, **_roi_heads_kwargs(s))
    return GeneralizedRCNN(backbone, rpn, heads, _transform(s, 32))


def build_retinanet(s: Settings, arch: str, state: dict[str, Tensor] | None, num_classes: int) -> RetinaNet:
    resnet = _resnet_from(s, arch, state)
    c5 = stage_channels(resnet)[3]
    out = s.int("MODEL.FPN.OUT_CHANNELS")
    backbone = _fpn_backbone(resnet, s, [2, 3, 4], LastLevelP6P7(c5, out))
    anchors = _anchor_generator(s, 5)
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
    model.transform = _transform(s, 32)
    return model


# --------------------------------------------------------------------------------------------
# Semantic segmentation


class FCNSemSeg(nn.Module):
    """FCN-16s-style semantic segmentation (the Detectron2 engine's SemanticSegmentor +
    FCNDilatedHead): dilated ResNet -> NUM_CONVS x (3x3 conv, dilation, norm, ReLU) -> 1x1 conv ->
    bilinear x COMMON_STRIDE.

    ``model(images, targets)`` in training: images (float [0, 1], already resized/cropped) and
    [H, W] int64 targets (IGNORE_VALUE where unlabeled) -> {"loss_sem_seg"}. In eval:
    ``model(images)`` -> per image [NUM_CLASSES, H, W] logits at the input resolution (the image is
    resized to MIN_SIZE_TEST / MAX_SIZE_TEST first, as Detectron2's test pipeline does).
    """

    def __init__(self, s: Settings, arch: str, state: dict[str, Tensor] | None) -> None:
        super().__init__()
        resnet = _resnet_from(s, arch, state)
        self.trunk = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3,
            resnet.layer4,
        )
        in_ch = stage_channels(resnet)[3]
        dim = s.int("MODEL.SEM_SEG_HEAD.CONVS_DIM")
        dil = s.int("MODEL.SEM_SEG_HEAD.DILATION")
        norm = norm_factory(str(s["MODEL.SEM_SEG_HEAD.NORM"]))
        convs: list[nn.Module] = []
        for i in range(s.int("MODEL.SEM_SEG_HEAD.NUM_CONVS")):
            conv = nn.Conv2d(in_ch if i == 0 else dim, dim, 3, padding=dil, dilation=dil, bias=norm is None)
            c2_msra_fill(conv)
            convs += [conv, *([norm(dim)] if norm is not None else []), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*convs)
        self.predictor = nn.Conv2d(dim if convs else in_ch, s.int("MODEL.SEM_SEG_HEAD.NUM_CLASSES"), 1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)
        self.stride = s.int("MODEL.SEM_SEG_HEAD.COMMON_STRIDE")
        self.ignore_value = s.int("MODEL.SEM_SEG_HEAD.IGNORE_VALUE")
        self.loss_weight = s.float("MODEL.SEM_SEG_HEAD.LOSS_WEIGHT")
        self.min_size_test = s.int("INPUT.MIN_SIZE_TEST")
        self.max_size_test = s.int("INPUT.MAX_SIZE_TEST")
        self.register_buffer("mean", torch.tensor([float(v) / 255 for v in s.list("MODEL.PIXEL_MEAN")]).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) / 255 for v in s.list("MODEL.PIXEL_STD")]).view(-1, 1, 1))

    def _logits(self, batch: Tensor) -> Tensor:
        x = self.predictor(self.head(self.trunk(batch)))
        return F.interpolate(x, scale_factor=self.stride, mode="bilinear", align_corners=False)

    def _batch(self, images: list[Tensor]) -> Tensor:
        h = max(int(i.shape[-2]) for i in images)
        w = max(int(i.shape[-1]) for i in images)
        out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for k, img in enumerate(images):
            out[k, :, : img.shape[-2], : img.shape[-1]] = (img - self.mean) / self.std
        return out

    def forward(self, images: list[Tensor], targets: list[Tensor] | None = None) -> Any:
        if self.training:
            assert targets is not None
            batch = self._batch(images)
            target = torch.full(
                (len(targets), batch.shape[-2], batch.shape[-1]), self.ignore_value, dtype=torch.int64,
                device=batch.device,
            )
            for k, t in enumerate(targets):
                target[k, : t.shape[-2], : t.shape[-1]] = t
            logits = self._logits(batch)[..., : target.shape[-2], : target.shape[-1]]
            loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_value)
            return {"loss_sem_seg": loss * self.loss_weight}
        from torchvision.transforms.v2 import functional as TF

        outputs = []
        for img in images:
            h, w = int(img.shape[-2]), int(img.shape[-1])
            size = (h, w)
            if self.min_size_test > 0:
                size = shortest_edge_size(h, w, self.min_size_test, self.max_size_test)
            x = TF.resize(img, list(size), antialias=True) if size != (h, w) else img
            logits = self._logits(self._batch([x]))[..., : size[0], : size[1]]
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            outputs.append(logits[0])
        return outputs


# --------------------------------------------------------------------------------------------
# Entry point


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
    return any(str(settings.get(k, "")) in SYNC_NORMS for k in keys)
