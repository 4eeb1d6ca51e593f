"""The protocol's classifier and schedule, shared by the image-based protocol and the cached heads:
one `nn.Linear` (weights N(0, 0.01), bias 0), SGD with momentum, step decay x0.1 at milestones."""

from __future__ import annotations

import torch
from torch import nn

from detco_bench.linear.config import LinearConfig


def linear_head(in_dim: int, classes: int) -> nn.Linear:
    head = nn.Linear(in_dim, classes)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    return head


def sgd_optimizer(head: nn.Module, cfg: LinearConfig) -> torch.optim.SGD:
    return torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def epoch_lr(cfg: LinearConfig, epoch: int) -> float:
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """How many rows of logits (N, classes) have target (N,) among their top k, for each k."""
    top = logits.topk(max(ks), dim=1).indices
    hit = top == target[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


def reported_ks(classes: int) -> tuple[int, ...]:
    """Top-5 only makes sense with more than 5 classes."""
    return (1, 5) if classes > 5 else (1,)
