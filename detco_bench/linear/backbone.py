"""The frozen backbone under evaluation and the check that it stayed frozen."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from detco_bench.checkpoints import LoadedBackbone
from pretrain.detco import ResNetTrunk


class FrozenBackbone(nn.Module):
    """A checkpoint's ResNet in eval mode, no gradients: images (N, 3, H, W) -> pooled features
    per stage [res2 .. res5], each (N, C_s)."""

    def __init__(self, loaded: LoadedBackbone) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(loaded.arch)
        self.trunk.load_state_dict(loaded.state_dict, strict=True)
        self.trunk.eval()
        for p in self.trunk.parameters():
            p.requires_grad = False
        self.channels = self.trunk.stage_channels

    def train(self, mode: bool = True) -> FrozenBackbone:  # stays in eval mode: BN statistics are frozen
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [f.mean(dim=(2, 3)) for f in self.trunk(images)]


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor of a state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_frozen(backbone: FrozenBackbone, expected: str) -> None:
    """MoCo's sanity check: the backbone after training equals the checkpoint's weights."""
    now = fingerprint(backbone.trunk.state_dict())
    if now != expected:
        raise RuntimeError("the backbone changed during linear evaluation (weights or BN statistics "
                           "differ from the checkpoint): the probe is not measuring the frozen features")
