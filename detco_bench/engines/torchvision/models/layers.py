"""Detectron2's normalization names and weight initialisations, on torch modules."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detco_bench.transfer_config import SYNC_BN_NAMES

#: Builds a norm layer for a number of channels.
NormFactory = Callable[[int], nn.Module]


def norm_factory(name: str) -> NormFactory | None:
    """Detectron2's ``get_norm`` names -> a module factory (None for ""). BN and every synchronized
    variant give trainable `nn.BatchNorm2d`; the engine converts them to `nn.SyncBatchNorm` under DDP
    on GPUs when the config asks for synchronized BN."""
    if not name:
        return None
    if name in ("BN", *SYNC_BN_NAMES):
        return nn.BatchNorm2d
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name == "GN":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"unsupported norm {name!r} (BN, SyncBN, FrozenBN, GN or empty)")


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2's MSRAFill (Detectron2's `c2_msra_fill`): He normal, fan_out; zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill (Detectron2's `c2_xavier_fill`): kaiming_uniform_(a=1); zero bias."""
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
