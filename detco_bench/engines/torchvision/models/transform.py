"""Normalisation, batching and test-time resizing of the detection models."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms.v2 import functional as TF

from detco_bench.engines.torchvision.data.images import shortest_edge_size
from detco_bench.engines.torchvision.settings import Settings


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
        """image: [3, H, W] float; at test time resized by the ResizeShortestEdge rule, else unchanged."""
        if self.training:
            return image, target
        short = int(self.min_size[-1])
        if short <= 0:
            return image, target
        h, w = image.shape[-2:]
        size = shortest_edge_size(int(h), int(w), short, int(self.max_size))
        if size != (int(h), int(w)):
            image = TF.resize(image, list(size), antialias=True)
        return image, target


def transform_from_settings(s: Settings, size_divisible: int) -> D2Transform:
    """`D2Transform` with INPUT.MIN/MAX_SIZE_TEST and MODEL.PIXEL_MEAN / STD (0-255 units, divided by 255);
    images are padded to a multiple of `size_divisible`."""
    return D2Transform(
        s.int("INPUT.MIN_SIZE_TEST"),
        s.int("INPUT.MAX_SIZE_TEST"),
        [float(v) / 255.0 for v in s.list("MODEL.PIXEL_MEAN")],
        [float(v) / 255.0 for v in s.list("MODEL.PIXEL_STD")],
        size_divisible,
    )
