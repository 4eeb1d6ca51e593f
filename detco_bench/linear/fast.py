"""Linear heads fitted on cached features (the `fast` and `stages` modes).

* `train_sgd_head`: the protocol's head, optimiser and schedule; each epoch runs over one feature
  per training image, as the protocol runs over one fresh augmentation of each: cached view
  e mod V in epoch e (`view_sampling` "cycle"), or a fresh draw from a Gaussian fitted to the
  image's V views ("gaussian", `gaussian_view`). With V augmented views this approximates the
  protocol at V / 100 of its backbone cost.
* `fit_lbfgs_head`: multinomial logistic regression solved by L-BFGS on standardised features,
  its L2 weight decay chosen on a held-out split of the training images (the CLIP /
  ssl-transfer linear evaluations' recipe), then refitted on all of them.

Both return the head as a plain `nn.Linear` on raw features and a JSON-able account of the fit
(which views, which weight decay) for the result record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detco_bench.errors import UserError
from detco_bench.linear.config import LinearConfig
from detco_bench.linear.head import epoch_lr, linear_head, reported_ks, sgd_optimizer, topk_correct

_CHUNK_ROWS = 65536  # rows per matmul in the full-batch loss: bounds memory on ImageNet-sized caches
_PARALLEL_MACS = 1 << 26  # below this many multiply-adds per matmul a head fit runs on one CPU thread


@contextmanager
def _cpu_threads_for(macs: int, device: torch.device) -> Iterator[None]:
    """One CPU thread while fitting a small head. Its matmuls are too small to split, and on a busy
    machine OpenMP's synchronisation made 2 threads 15-35x slower than 1 for the benchmark's heads
    (4 classes, 512-d); an ImageNet-sized head (256 x 2048 x 1000) keeps torch's thread count."""
    if device.type != "cpu" or macs >= _PARALLEL_MACS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gaussian_view(views: torch.Tensor | Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """One fresh feature per image from a Gaussian fitted to its cached views.

    views: K views of each of B images, (K, B, C) or K tensors (B, C). Returns (B, C): m + sum_k w_k
    (x_k - m), with m the image's mean view and w_k ~ N(0, 1/K) drawn per image, i.e. a draw with the
    views' mean and covariance (1/K sum_k (x_k - m)(x_k - m)^T), inside the span of the image's own views.
    """
    k, first = len(views), views[0]
    w = torch.randn(k, first.shape[0], 1, generator=generator, dtype=first.dtype) / k ** 0.5
    # The same draw written as one weighted sum of the views, accumulated view by view (no (K, B, C)
    # stack): m + sum_k w_k (x_k - m) = sum_k (w_k + (1 - sum_j w_j) / K) x_k.
    weights = (w + (1.0 - w.sum(0, keepdim=True)) / k).to(first.device)
    draw = first * weights[0]
    for view, weight in zip(views[1:], weights[1:], strict=True):
        draw.addcmul_(view, weight)
    return draw


def train_sgd_head(views: Sequence[torch.Tensor], y: torch.Tensor, classes: int, cfg: LinearConfig,
                   device: torch.device) -> tuple[nn.Linear, dict[str, Any]]:
    """The protocol's head and schedule on cached views, each (N, C) with labels y (N,): in epoch e
    on view e mod V (`cfg.view_sampling` "cycle") or on a `gaussian_view` of every image ("gaussian",
    which reads all V views each epoch)."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = linear_head(views[0].shape[1], classes).to(device)
    optimizer = sgd_optimizer(head, cfg)
    with _cpu_threads_for(min(cfg.batch_size, len(y)) * views[0].shape[1] * classes, device):
        for epoch in range(cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(cfg, epoch)
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                if cfg.view_sampling == "gaussian":
                    rows = gaussian_view([v[idx].to(device).float() for v in views], g)
                else:
                    rows = views[epoch % len(views)][idx].to(device).float()
                loss = F.cross_entropy(head(rows), y[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return head, {"head": "sgd", "views_per_epoch": 1}


def holdout_mask(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """(N,) bool: a class-stratified `fraction` of the images (at least one left to fit per class)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        take = min(round(fraction * len(idx)), len(idx) - 1)
        mask[idx[torch.randperm(len(idx), generator=g)[:take]]] = True
    if not mask.any():
        raise UserError("too few training images per class to hold any out for the lbfgs weight-decay sweep")
    return mask


def _solve(x: torch.Tensor, t: torch.Tensor, weights: torch.Tensor, weight_decay: float,
           start: tuple[torch.Tensor, torch.Tensor], max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise the weighted mean cross-entropy of rows x (M, C) with labels t (M,) and row
    weights (M,) (0 leaves a row out) + weight_decay / 2 * |W|^2, from `start` (W (classes, C),
    b (classes,)). Returns W, b and the L-BFGS iterations taken."""
    w = start[0].clone().requires_grad_(True)
    b = start[1].clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    total = weights.sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.zeros((), device=x.device)
        # Chunks bound the (rows, classes) logits on ImageNet-sized caches; each chunk's share
        # is divided by the full total, so the gradient is the full-batch mean's.
        for i in range(0, len(x), _CHUNK_ROWS):
            rows = slice(i, i + _CHUNK_ROWS)
            loss = (F.cross_entropy(x[rows] @ w.T + b, t[rows], reduction="none") * weights[rows]).sum() / total
            loss.backward()
            value += loss.detach()
        penalty = 0.5 * weight_decay * w.pow(2).sum()
        penalty.backward()
        return value + penalty.detach()

    optimizer.step(closure)
    iterations = int(optimizer.state[optimizer.param_groups[0]["params"][0]].get("n_iter", 0))
    return w.detach(), b.detach(), iterations


def fit_lbfgs_head(views: Sequence[torch.Tensor], y: torch.Tensor, center: torch.Tensor, classes: int,
                   cfg: LinearConfig, device: torch.device) -> tuple[nn.Linear, dict[str, Any]]:
    """Logistic regression on every cached view (N, C) of the training images, labels y (N,); the
    weight decay is the one of `cfg.lbfgs_weight_decays` with the best top-1 on `center` (N, C),
    the centre crops, of the held-out images (ties go to the larger weight decay).

    L-BFGS is full-batch and evaluates the loss hundreds of times per weight decay, so the views
    are loaded into memory once, standardised: V * N * C float32 (ImageNet, ResNet-50, centre crops
    only: 10.5 GB).
    """
    x = torch.cat([v.to(device).float() for v in views])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    # Standardising makes one weight-decay grid fit any backbone's feature scale.
    x.sub_(mean).div_(std)
    t = y.to(device).repeat(len(views))
    held = holdout_mask(y, cfg.holdout_fraction, cfg.seed).to(device)
    held_x = (center[held.cpu()].to(device).float() - mean) / std
    held_y = y.to(device)[held]
    fit_weights = (~held).float().repeat(len(views))
    dim = x.shape[1]
    start = (torch.zeros(classes, dim, device=device), torch.zeros(classes, device=device))
    scores: dict[float, float] = {}
    solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    # Strongest regularisation first, each solve warm-started from the previous one (a path).
    with _cpu_threads_for(min(len(x), _CHUNK_ROWS) * dim * classes, device):
        for wd in sorted(cfg.lbfgs_weight_decays, reverse=True):
            w, b, _ = _solve(x, t, fit_weights, wd, start, cfg.lbfgs_max_iter)
            scores[wd] = 100.0 * topk_correct(held_x @ w.T + b, held_y, (1,))[0] / len(held_y)
            solutions[wd] = start = (w, b)
        chosen = max(scores, key=lambda wd: (scores[wd], wd))
        w, b, iterations = _solve(x, t, torch.ones_like(fit_weights), chosen, solutions[chosen],
                                  cfg.lbfgs_max_iter)
    head = nn.Linear(dim, classes).to(device)
    with torch.no_grad():
        # Fold the standardisation in: W (x - m) / s + b == (W / s) x + (b - (W / s) m).
        head.weight.copy_(w / std)
        head.bias.copy_(b - (w / std) @ mean)
    info = {"head": "lbfgs", "weight_decay": chosen,
            "holdout_top1": {f"{wd:g}": round(score, 4) for wd, score in sorted(scores.items())},
            "holdout_images": len(held_y), "refit_iterations": iterations}
    return head, info


@torch.no_grad()
def evaluate_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, classes: int, prefix: str = ""
                  ) -> dict[str, float]:
    """Top-k (percent) of head on features x (N, C) against labels y (N,), keys `{prefix}top{k}`."""
    ks = reported_ks(classes)
    correct = topk_correct(head(x.float()), y, ks)
    return {f"{prefix}top{k}": 100.0 * c / len(y) for k, c in zip(ks, correct, strict=True)}
