"""Split-BN: one process normalises like k processes (MoCo's single-GPU SplitBatchNorm).

MoCo's shuffle-BN needs several processes: each normalises its own slice of the batch, and the key
encoder's slices are a random re-partition of the batch, so the BN statistics of a key never come
from the same images as its query's (otherwise the model can "cheat" through them). On one process
the whole batch would share one set of statistics. Split-BN restores the multi-process behaviour:

- `SplitBatchNorm2d`: in training, a batch (N, C, H, W) is normalised as k groups; group j holds
  samples j, j+k, j+2k, ... (MoCo's layout: viewing the batch as (N/k, k*C, H, W) makes each group
  a channel block of one plain BN call, with no copy). The running statistics are updated per
  group and averaged over the groups, as averaging k processes' BN buffers would. In eval mode it
  is a plain BatchNorm2d with those averaged statistics.
- `local_shuffle` / `local_unshuffle`: the key encoder's batch is randomly permuted before it (an
  image and its patch set together) and restored after, so its groups differ from the query's.
- `resolve_bn_splits`: k from the request (automatic: 8 on one process, 1 under DDP where real
  shuffle-BN applies) and the per-process batch; each group needs at least 2 images.

The BN modules change class, not name, so state-dict keys stay torchvision's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.errors import PretrainInputError

DEFAULT_SPLITS_ONE_PROCESS = 8  # MoCo's 8 GPUs
MIN_IMAGES_PER_SPLIT = 2  # one image per group would make every BN output 0 on 1x1 maps


class SplitBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that, in training, normalises `num_splits` groups of the batch separately
    (group j: samples j::num_splits). Same parameters, buffers and state-dict keys as BatchNorm2d."""

    num_splits: int = 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W); N must be a multiple of `num_splits` in training."""
        k = self.num_splits
        if not self.training or k == 1:
            return super().forward(input)
        n, c, h, w = input.shape
        if n % k:
            raise ValueError(f"split-BN: batch of {n} does not divide into {k} groups")
        factor = self._average_factor()
        mean = var = None
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            mean, var = self.running_mean.repeat(k), self.running_var.repeat(k)
        weight = self.weight.repeat(k) if self.weight is not None else None
        bias = self.bias.repeat(k) if self.bias is not None else None
        # reshape, not view: a channels_last batch needs the copy that a contiguous one avoids.
        out = F.batch_norm(input.reshape(n // k, k * c, h, w), mean, var, weight, bias, True, factor, self.eps)
        if mean is not None and var is not None:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(k, c).mean(dim=0))  # type: ignore[union-attr]
                self.running_var.copy_(var.view(k, c).mean(dim=0))  # type: ignore[union-attr]
        out = out.reshape(n, c, h, w)
        if not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)  # keep the layout the next conv expects
        return out

    def _average_factor(self) -> float:
        """The running-average weight of this step, as nn.BatchNorm2d computes it (also counting
        `num_batches_tracked`, so the buffers evolve exactly as a plain BN's)."""
        if not self.track_running_stats or self.num_batches_tracked is None:
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum


def use_split_bn(module: nn.Module, num_splits: int) -> int:
    """Make every BatchNorm2d inside `module` a `SplitBatchNorm2d` with `num_splits` groups, in place
    (the class is swapped, so parameters, buffers and names stay). Returns how many were changed."""
    changed = 0
    for m in module.modules():
        if type(m) in (nn.BatchNorm2d, SplitBatchNorm2d):
            m.__class__ = SplitBatchNorm2d
            m.num_splits = num_splits  # type: ignore[assignment]
            changed += 1
    return changed


@torch.no_grad()
def local_shuffle(*xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Shuffle-BN on one process, step 1: the tensors (each (N, ...)) permuted along dim 0 by one
    random permutation (an image and its patch set stay together), and the index that undoes it."""
    perm = torch.randperm(xs[0].shape[0], device=xs[0].device)
    return [x[perm] for x in xs], torch.argsort(perm)


@torch.no_grad()
def local_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN on one process, step 2: outputs (N, ...) back in the original sample order."""
    return x[unshuffle]


@dataclass(frozen=True)
class BNSplits:
    """The chosen number of BN groups per process, and a line saying why when it is not the request."""

    splits: int
    note: str | None = None


def valid_splits(batch_per_process: int) -> list[int]:
    """The k that divide the per-process batch into groups of at least 2 images (1 always counts)."""
    return [k for k in range(1, batch_per_process + 1)
            if k == 1 or (batch_per_process % k == 0 and batch_per_process // k >= MIN_IMAGES_PER_SPLIT)]


def resolve_bn_splits(requested: int | None, batch_per_process: int, world: int) -> BNSplits:
    """k for split-BN. `requested` None: automatic, 8 on one process (fewer when the batch is too
    small: the largest valid k below 8, with a note), 1 under DDP. An explicit value must be valid
    (PretrainInputError otherwise)."""
    valid = valid_splits(batch_per_process)
    if requested is not None:
        if requested not in valid:
            raise PretrainInputError(
                f"--bn-splits {requested} does not divide the batch of {batch_per_process} image(s) per process "
                f"into groups of at least {MIN_IMAGES_PER_SPLIT}; valid values: {', '.join(map(str, valid))}")
        return BNSplits(requested)
    if world > 1:
        return BNSplits(1)
    k = max(v for v in valid if v <= DEFAULT_SPLITS_ONE_PROCESS)
    if k == DEFAULT_SPLITS_ONE_PROCESS:
        return BNSplits(k)
    return BNSplits(k, f"split-BN: a batch of {batch_per_process} does not divide into "
                       f"{DEFAULT_SPLITS_ONE_PROCESS} groups of at least {MIN_IMAGES_PER_SPLIT} images; "
                       f"using {k} group(s)")


def describe_bn(splits: int, batch_per_process: int, world: int) -> str:
    """One line saying how the encoders normalise (for the log)."""
    group = batch_per_process // splits
    if world == 1 and splits == 1:
        return (f"BN: one group of {batch_per_process} images, no shuffle-BN on one process "
                "(the key and query share BN statistics)")
    across = f"shuffle-BN across {world} processes" if world > 1 else "key batch shuffled within the process"
    if splits == 1:
        return f"BN: {across}, one group of {batch_per_process} images per process"
    return f"split-BN: {splits} groups of {group} images per process, {across}"
