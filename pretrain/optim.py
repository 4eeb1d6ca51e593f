"""The parameter updates of a step (SGD, the key encoder's momentum update), slice by slice on the CPU.

On the CPU each large tensor is updated in slices of at most `SLICE` elements, every slice going
through all of the update's ops before the next one starts. An elementwise op on so few elements
runs on the calling thread (it is below ATen's parallel grain size), so this
  - keeps a slice in cache across the update's ops, instead of streaming the whole tensor from
    memory once per op (SGD with weight decay and momentum is four ops per tensor);
  - allocates no tensor-sized temporary (SGD's `grad + wd * param`);
  - starts no OpenMP parallel region, which on a loaded machine waits until every thread has been
    scheduled.
SGD of DetCo's 104M trained parameters (ResNet-50, weight decay) on the loaded 2-core development
machine: whole-tensor 0.6-2.9 s with 2 threads and 0.22-0.27 s with one, slice by slice 0.2-0.37 s
and 0.11-0.16 s.
Every element goes through the same ops with the same operands as in torch.optim.SGD's for-loop
implementation, and ATen computes each element of these ops the same way wherever it falls in a
tensor (vectorised body or scalar tail), so the results are bit-identical to the whole-tensor ops
(`tests/test_pretrain_model.py` checks steps of DetCo against torch's SGD and the plain loop).

On other devices nothing changes: torch's SGD runs as it is (its multi-tensor path on CUDA), and the
momentum update runs whole-tensor ops (slicing would only multiply kernel launches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from pretrain.config import PretrainConfig

# Elements per slice: ATen's GRAIN_SIZE, the largest elementwise op that stays on the calling thread.
SLICE = 32768


def slices(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Matching pieces of same-shaped tensors, to be updated piece by piece: consecutive flat slices
    of at most SLICE elements when all are contiguous CPU tensors, else the tensors whole."""
    first = tensors[0]
    if (first.device.type != "cpu" or first.numel() <= SLICE
            or not all(t.is_contiguous() and t.shape == first.shape for t in tensors)):
        return [tensors]
    return list(zip(*(t.view(-1).split(SLICE) for t in tensors), strict=True))


@torch.no_grad()
def momentum_update_(keys: Sequence[torch.Tensor], queries: Sequence[torch.Tensor], momentum: float) -> None:
    """key <- momentum * key + (1 - momentum) * query for each pair, in place on the keys."""
    for k, q in zip(keys, queries, strict=True):
        for k_part, q_part in slices(k, q):
            k_part.mul_(momentum).add_(q_part, alpha=1.0 - momentum)


class SlicedSGD(torch.optim.SGD):
    """torch.optim.SGD, with its state dict and arithmetic, whose step on CPU parameters runs its
    for-loop implementation's ops slice by slice (see the module docstring).

    Settings it has no slice-by-slice form for (nesterov, maximize, a tensor lr or weight decay,
    differentiable, foreach, fused), sparse gradients and parameters off the CPU take torch's own
    step (its multi-tensor one on CUDA, as before).
    """

    def _sliceable(self) -> bool:
        for group in self.param_groups:
            if (group["nesterov"] or group["maximize"] or group["differentiable"] or group["foreach"]
                    or group["fused"] or isinstance(group["lr"], torch.Tensor)
                    or isinstance(group["weight_decay"], torch.Tensor)):
                return False
            if any(p.device.type != "cpu" or (p.grad is not None and p.grad.is_sparse) for p in group["params"]):
                return False
        return True

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One SGD step; `closure` re-evaluates the loss, as for torch.optim.SGD."""
        if not self._sliceable():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """torch's `_single_tensor_sgd` for one parameter, piece by piece:
        d = grad + wd * p;  buf = momentum * buf + (1 - dampening) * d;  p -= lr * buf
        (p -= lr * d when momentum is 0)."""
        wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
        grad = p.grad
        assert grad is not None
        if momentum == 0:
            for p_part, g_part in slices(p, grad):
                p_part.add_(g_part.add(p_part, alpha=wd) if wd != 0 else g_part, alpha=-lr)
            return
        state = self.state[p]
        if state.get("momentum_buffer") is None:
            # The first step, once per run, exactly as torch's: the buffer starts as a clone of d.
            d = grad.add(p, alpha=wd) if wd != 0 else grad
            buf = state["momentum_buffer"] = d.detach().clone()
            p.add_(buf, alpha=-lr)
            return
        for p_part, g_part, b_part in slices(p, grad, state["momentum_buffer"]):
            b_part.mul_(momentum).add_(g_part.add(p_part, alpha=wd) if wd != 0 else g_part,
                                       alpha=1 - group["dampening"])
            p_part.add_(b_part, alpha=-lr)


def pretrain_optimizer(model: nn.Module, cfg: PretrainConfig) -> SlicedSGD:
    """The pretraining optimizer: SGD (lr cfg.lr, momentum, weight decay) over the trained parameters."""
    params: Iterable[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    return SlicedSGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
