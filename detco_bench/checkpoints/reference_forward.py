"""The res2..res5 features the numerical check compares: torchvision's ResNet on torchvision-named
weights, and detectron2's ResNet recomputed in plain torch on detectron2-named weights (so the check
runs where detectron2 is not installed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from detco_bench.checkpoints.archs import ARCHS, STAGES, meta_torchvision_resnet
from detco_bench.checkpoints.messages import examples
from detco_bench.checkpoints.tensors import as_tensor

#: Side of the square random input of the numerical check (every stage sees >= 2x2 at 64).
DEFAULT_INPUT_SIZE = 128


def verification_input(size: int = DEFAULT_INPUT_SIZE, seed: int = 0) -> torch.Tensor:
    """A fixed fp32 input [1, 3, size, size] (standard-normal, like a normalized image)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=gen)


@torch.no_grad()
def torchvision_features(sd: Mapping[str, torch.Tensor], arch: str, x: torch.Tensor
                         ) -> dict[str, torch.Tensor]:
    """res2..res5 outputs ([1, C, H/4..H/32, ...]) of ``torchvision.models.<arch>()`` with `sd`
    loaded (eval mode, BN uses running statistics). Raises ValueError when `sd` does not fill
    every backbone key of the model exactly (fc aside)."""
    model = meta_torchvision_resnet(arch)
    # assign=True replaces the meta tensors, so the model costs no random initialisation.
    result = model.load_state_dict(dict(sd), strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"torchvision {arch} load: missing {examples(missing)}, "
                         f"unexpected {examples(result.unexpected_keys)}")
    model.eval()
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out: dict[str, torch.Tensor] = {}
    for stage, layer in zip(STAGES, (model.layer1, model.layer2, model.layer3, model.layer4), strict=True):
        h = layer(h)
        out[stage] = h
    return out


@torch.no_grad()
def detectron2_reference_features(weights: Mapping[str, Any], arch: str, x: torch.Tensor
                                  ) -> dict[str, torch.Tensor]:
    """res2..res5 of detectron2's ResNet computed in plain torch from detectron2-named weights.

    Mirrors ``build_resnet_backbone`` with STRIDE_IN_1X1=False, NORM="BN" in eval mode,
    RES5_DILATION=1: stem conv7x7/2 + BN + ReLU + maxpool3x3/2; blocks stride on conv2 (3x3) of
    Bottleneck / conv1 of BasicBlock, projection shortcut where channels change. The structure comes
    from `ARCHS`, so a weight missing under its detectron2 name raises KeyError.
    """
    spec = ARCHS[arch]
    w = {k: as_tensor(v) for k, v in weights.items()}

    def conv_norm(h: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        kernel = w[f"{name}.weight"]
        h = F.conv2d(h, kernel, stride=stride, padding=kernel.shape[-1] // 2)
        return F.batch_norm(h, w[f"{name}.norm.running_mean"], w[f"{name}.norm.running_var"],
                            w[f"{name}.norm.weight"], w[f"{name}.norm.bias"], training=False, eps=1e-5)

    h = F.relu(conv_norm(x, "stem.conv1", stride=2))
    h = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
    out: dict[str, torch.Tensor] = {}
    in_ch, out_ch = 64, (64 if spec.block == "basic" else 256)
    for i, n_blocks in enumerate(spec.blocks):
        for b in range(n_blocks):
            p = f"res{i + 2}.{b}"
            stride = 2 if (b == 0 and i > 0) else 1
            cin = in_ch if b == 0 else out_ch
            shortcut = conv_norm(h, f"{p}.shortcut", stride) if cin != out_ch else h
            if spec.block == "basic":
                y = F.relu(conv_norm(h, f"{p}.conv1", stride))
                y = conv_norm(y, f"{p}.conv2")
            else:
                y = F.relu(conv_norm(h, f"{p}.conv1"))  # STRIDE_IN_1X1=False: not here ...
                y = F.relu(conv_norm(y, f"{p}.conv2", stride))  # ... but on the 3x3 conv
                y = conv_norm(y, f"{p}.conv3")
            h = F.relu(y + shortcut)
        out[STAGES[i]] = h
        in_ch, out_ch = out_ch, out_ch * 2
    return out
