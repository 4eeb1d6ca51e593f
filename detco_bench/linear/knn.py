"""Weighted kNN on cached features (the `knn` mode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detco_bench.linear.head import reported_ks, topk_correct


@torch.no_grad()
def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> dict[str, float]:
    """Weighted kNN (as in InstDisc / DINO): cosine similarity, the k nearest training features
    vote for their class with weight exp(sim / T). Features (N, C), labels (N,)."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, len(bank))
    ks = reported_ks(classes)
    correct = [0] * len(ks)
    for i in range(0, len(val_x), chunk):
        q = F.normalize(val_x[i:i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        for j, c in enumerate(topk_correct(votes, val_y[i:i + chunk], ks)):
            correct[j] += c
    return {f"knn_top{kk}": 100.0 * c / len(val_x) for kk, c in zip(ks, correct, strict=True)}
