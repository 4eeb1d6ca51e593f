"""Box coding as Detectron2's Box2BoxTransform does it: deltas decoded in float32."""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection._utils import BoxCoder


class D2BoxCoder(BoxCoder):
    """torchvision's BoxCoder (the same formula, weights and scale clamp log(1000 / 16)), except that
    decoding runs in float32: torchvision casts the anchors / proposals to the deltas' dtype, which
    under AMP rounds box corners to fp16 (0.5 px steps beyond 512) or bf16 (4 px beyond 512)."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """rel_codes: [R, 4 * k] deltas; boxes: [R, 4] XYXY references. Returns float32 [R, 4 * k]."""
        return super().decode_single(rel_codes.float(), boxes.float())
