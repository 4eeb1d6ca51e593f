"""Where the contrastive step does not trust bf16 autocast: the ops that are kept in fp32.

1. Strided convolutions on a CPU feature map smaller than the stride.
   The oneDNN backward-weights kernel that PyTorch uses for bf16 on AMX CPUs
   (`brgconv_bwd_w:avx10_1_512_amx`; seen with torch 2.14.1 / oneDNN 3.12) does not write the
   weight gradient of the kernel taps that only ever see padding when the input is narrower than
   the stride (a 3x3 / stride-2 / pad-1 conv on a 1x1 or 4x1 (HxW) map; 1x4 and 2x2 maps are fine, as is
   fp32). Those taps keep whatever the allocator handed out: zeros in a fresh process, finite
   garbage up to ~1e38, or NaN, depending on the heap's history, which is why the failure looked
   random. Small crops meet this: 16-pixel patches reach ResNet's layer4 as 1x1 maps. Only width
   was seen to matter; height is guarded too, since such maps are tiny and fp32 costs nothing.
   CUDA runs cuDNN, not this kernel, and is left in bf16.

2. The L2 normalisation of the projections: the heads' matmuls run in bf16, but the unit vectors
   are computed in fp32, so the keys stored in the fp32 queue have unit norm to fp32 precision
   rather than to bf16's 8 mantissa bits (|norm - 1| up to 3e-3 in bf16, 6e-8 in fp32).

3. The InfoNCE logits (`pretrain.detco.info_nce`) leave autocast altogether: casting q to fp32 is
   not enough, since autocast would still run `q @ queue` as a bf16 matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _smaller_than_stride(x: torch.Tensor, stride: tuple[int, ...]) -> bool:
    return x.shape[-2] < stride[0] or x.shape[-1] < stride[1]


class StridedConv2d(nn.Conv2d):
    """An `nn.Conv2d` that leaves CPU autocast for inputs smaller than its stride (see 1. above).

    Same parameters and state dict as `nn.Conv2d`; elsewhere it behaves exactly like one.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and _smaller_than_stride(input, self.stride)):
            with torch.autocast("cpu", enabled=False):
                return super()._conv_forward(input.float(), weight.float(),
                                             None if bias is None else bias.float())
        return super()._conv_forward(input, weight, bias)


def guard_strided_convs(module: nn.Module) -> int:
    """Turn every strided `nn.Conv2d` inside `module` into a `StridedConv2d`, in place.

    The class is swapped rather than the module replaced, so parameter objects, names (torchvision's
    state-dict keys) and hooks stay as they are. Returns how many convolutions were guarded.
    """
    guarded = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and max(m.stride) > 1:
            m.__class__ = StridedConv2d
            guarded += 1
    return guarded


def unit_vectors(x: torch.Tensor) -> torch.Tensor:
    """Embeddings (N, D) of any float dtype -> fp32 L2-normalised rows (N, D) (see 2. above)."""
    return F.normalize(x.float(), dim=1)
