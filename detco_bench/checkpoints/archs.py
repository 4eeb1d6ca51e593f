"""The supported ResNets, telling them apart by their keys, and the keys each has in torchvision and
detectron2 naming.

The detectron2 key set is derived from the architecture, not from the renamer (`rename`), so that
a renamer bug shows up as a missing or unexpected key instead of confirming itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch

from detco_bench.checkpoints.messages import examples
from detco_bench.errors import UserError


@dataclass(frozen=True)
class ArchSpec:
    """A ResNet family member: block type and number of blocks in res2..res5 (layer1..layer4)."""

    depth: int
    block: Literal["basic", "bottleneck"]
    blocks: tuple[int, int, int, int]


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(18, "basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec(34, "basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec(50, "bottleneck", (3, 4, 6, 3)),
    "resnet101": ArchSpec(101, "bottleneck", (3, 4, 23, 3)),
    "resnet152": ArchSpec(152, "bottleneck", (3, 8, 36, 3)),
}


def arch_of_depth(depth: int) -> str:
    """The ResNet of MODEL.RESNETS.DEPTH `depth` (KeyError for a depth not in ARCHS)."""
    return {spec.depth: name for name, spec in ARCHS.items()}[int(depth)]


#: detectron2's names of the outputs of layer1..layer4.
STAGES: tuple[str, ...] = ("res2", "res3", "res4", "res5")

#: A torchvision key inside a residual block: layer number (1..4) and block index.
LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def detect_arch(sd: Mapping[str, Any]) -> str:
    """ResNet depth from a torchvision-named state dict: Bottleneck blocks have conv3, and the
    number of blocks per layer tells 18 from 34 and 50 / 101 / 152 apart."""
    counts = [0, 0, 0, 0]
    for key in sd:
        m = LAYER_KEY.match(key)
        if m:
            layer, block = int(m.group(1)) - 1, int(m.group(2))
            counts[layer] = max(counts[layer], block + 1)
    bottleneck = any(re.match(r"^layer[1-4]\.\d+\.conv3\.weight$", k) for k in sd)
    kind = "bottleneck" if bottleneck else "basic"
    for name, spec in ARCHS.items():
        if spec.block == kind and tuple(counts) == spec.blocks:
            return name
    if counts == [0, 0, 0, 0]:
        raise UserError(f"found {len(sd)} backbone keys like {examples(list(sd))} with no "
                        "'layer1..4' blocks: not a ResNet checkpoint")
    raise UserError(f"unsupported ResNet: {kind} blocks {counts} per stage; supported: "
                    + ", ".join(f"{n} ({s.block} {list(s.blocks)})" for n, s in ARCHS.items()))


def meta_torchvision_resnet(arch: str) -> torch.nn.Module:
    """``torchvision.models.<arch>()`` on the meta device: its structure without allocating or
    randomly initialising any weight."""
    # Deferred: torchvision takes seconds to import, and callers that only probe detectron2
    # (detco_bench.engines) import this package without needing it.
    import torchvision

    with torch.device("meta"):
        return getattr(torchvision.models, arch)(weights=None)


@cache
def torchvision_backbone_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``torchvision.models.<arch>()`` except ``fc.*``, with its shape."""
    model = meta_torchvision_resnet(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}


def detectron2_expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every parameter / BN buffer of detectron2's ResNet (as built by ``build_resnet_backbone``,
    norm BN, without ``num_batches_tracked``) and its shape, derived from the architecture alone.

    This follows detectron2's construction (BasicStem, BasicBlock / BottleneckBlock, a shortcut
    where in_channels != out_channels), not the torchvision->detectron2 renamer, so a renamer bug
    shows up as a missing or unexpected key.
    """
    spec = ARCHS[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out_ch: int, in_ch: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out_ch, in_ch, k, k)
        for f in _BN_FIELDS:
            shapes[f"{name}.norm.{f}"] = (out_ch,)

    conv("stem.conv1", 64, 3, 7)
    in_ch = 64
    out_ch = 64 if spec.block == "basic" else 256  # MODEL.RESNETS.RES2_OUT_CHANNELS
    bottleneck = 64
    for i, n_blocks in enumerate(spec.blocks):
        for b in range(n_blocks):
            p = f"res{i + 2}.{b}"
            cin = in_ch if b == 0 else out_ch
            if cin != out_ch:
                conv(f"{p}.shortcut", out_ch, cin, 1)
            if spec.block == "basic":
                conv(f"{p}.conv1", out_ch, cin, 3)
                conv(f"{p}.conv2", out_ch, out_ch, 3)
            else:
                conv(f"{p}.conv1", bottleneck, cin, 1)
                conv(f"{p}.conv2", bottleneck, bottleneck, 3)
                conv(f"{p}.conv3", out_ch, bottleneck, 1)
        in_ch, out_ch, bottleneck = out_ch, out_ch * 2, bottleneck * 2
    return shapes
