"""``cityscapes_sem``: the FCN-16s-style semantic segmentation model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from detco_bench.engines.torchvision.data.images import shortest_edge_size
from detco_bench.engines.torchvision.models.backbones import resnet_from_settings, stage_channels
from detco_bench.engines.torchvision.models.layers import c2_msra_fill, norm_factory
from detco_bench.engines.torchvision.settings import Settings


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
        resnet = resnet_from_settings(s, arch, state)
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
        """See the class docstring: the loss dict in training, per-image logits in eval."""
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
