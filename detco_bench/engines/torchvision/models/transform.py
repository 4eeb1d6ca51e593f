"""Normalisation, batching, test-time resizing and postprocessing of the detection models."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.transforms.v2 import functional as TF

from detco_bench.engines.torchvision.data.images import shortest_edge_size
from detco_bench.engines.torchvision.models.mask_paste import paste_masks
from detco_bench.engines.torchvision.settings import Settings


class D2Transform(GeneralizedRCNNTransform):
    """Normalisation and batching as torchvision does them; resizing and postprocessing as
    Detectron2 does them.

    Training inputs are already resized (and flipped) by the data pipeline, so nothing is resized;
    at test time the image is resized with Detectron2's ResizeShortestEdge rule (MIN_SIZE_TEST,
    MAX_SIZE_TEST, sizes rounded to the nearest integer, antialiased bilinear), and `postprocess`
    maps the detections back to the input image as Detectron2's detector_postprocess does.
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


    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` [D, 4] (and ``keypoints`` [D, K, 3]) scaled to the input image and
        clipped to it, detections whose box became empty dropped, ``masks`` [D, 1, M, M] pasted to
        [D, 1, H, W] probabilities by `mask_paste.paste_masks` (Detectron2's, not torchvision's)."""
        if self.training:
            return result
        small = [r.pop("masks", None) for r in result]
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for r, masks, size in zip(result, small, original_image_sizes, strict=True):
            r["boxes"] = box_ops.clip_boxes_to_image(r["boxes"], size)
            if masks is not None:
                r["masks"] = masks
            keep = (r["boxes"][:, 2] > r["boxes"][:, 0]) & (r["boxes"][:, 3] > r["boxes"][:, 1])
            if not bool(keep.all()):
                for key in list(r):
                    r[key] = r[key][keep]
            if masks is not None:
                r["masks"] = paste_masks(r["masks"], r["boxes"], size)
        return result


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
