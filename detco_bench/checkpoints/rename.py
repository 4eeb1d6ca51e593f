"""Renaming a torchvision-named backbone to the target's names, counting every name written so that
verification can prove each target key was filled exactly once."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

REASON_NUM_BATCHES = (
    "BatchNorm num_batches_tracked: a training counter that does not affect the output; "
    "detectron2's BN / FrozenBN do not need it"
)

_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def detectron2_name(key: str) -> str | None:
    """Detectron2 name of a torchvision ResNet key; None when detectron2 has no such tensor.

    conv1 -> stem.conv1, bn1 -> stem.conv1.norm, layerN.B.convK -> res{N+1}.B.convK,
    layerN.B.bnK -> res{N+1}.B.convK.norm, layerN.B.downsample.0/1 -> res{N+1}.B.shortcut(.norm).
    ``num_batches_tracked`` -> None (see `REASON_NUM_BATCHES`). Unknown keys are returned
    unchanged so that the key check reports them instead of them vanishing.
    """
    if key.endswith(".num_batches_tracked"):
        return None
    if key.startswith("conv1."):
        return "stem." + key
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = _TV_BLOCK.match(key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    bn = re.match(r"^bn(\d)\.(.+)$", rest)
    if bn:
        rest = f"conv{bn.group(1)}.norm.{bn.group(2)}"
    elif rest.startswith("downsample.0."):
        rest = "shortcut." + rest[len("downsample.0."):]
    elif rest.startswith("downsample.1."):
        rest = "shortcut.norm." + rest[len("downsample.1."):]
    return f"res{stage}.{block}.{rest}"


@dataclass
class Renamed:
    """Converted weights plus how often each target name was written (to prove "exactly once")."""

    weights: dict[str, torch.Tensor]
    filled: Counter[str]
    dropped: dict[str, str]


def to_detectron2(sd: Mapping[str, torch.Tensor]) -> Renamed:
    """Rename a torchvision backbone to detectron2's ResNet names (tensors unchanged)."""
    weights: dict[str, torch.Tensor] = {}
    filled: Counter[str] = Counter()
    dropped: dict[str, str] = {}
    for key, value in sd.items():
        name = detectron2_name(key)
        if name is None:
            dropped[key] = REASON_NUM_BATCHES
            continue
        filled[name] += 1
        weights[name] = value
    return Renamed(weights, filled, dropped)


def to_torchvision(sd: Mapping[str, torch.Tensor]) -> Renamed:
    """The torchvision output: the canonical backbone itself (no fc), every key kept."""
    return Renamed(dict(sd), Counter(sd.keys()), {})


def detectron2_payload(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The object stored in a Detectron2 ``.pkl``: numpy arrays in detectron2 naming; the
    checkpointer's name-matching heuristics add the ``backbone.bottom_up.`` prefix of FPN/C4."""
    return {"model": {k: v.detach().cpu().numpy() for k, v in weights.items()},
            "__author__": "detco-bench", "matching_heuristics": True}
