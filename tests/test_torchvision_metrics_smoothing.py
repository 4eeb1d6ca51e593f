"""The torchvision engine's metrics.jsonl smooths as Detectron2's metrics.json does: each loss term,
total_loss, time and data_time the median over the last 20 iterations, lr the iteration's own.
Driven through `train_loop` with a model whose losses follow a known, non-monotone sequence, so a
per-iteration value, a mean or a wrong window gives other numbers. The `detectron2`-marked test puts
the same losses into Detectron2's EventStorage and compares with what its JSONWriter would write."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from detco_bench.engines.torchvision.settings import Settings
from detco_bench.engines.torchvision.train.checkpoint import Checkpointer
from detco_bench.engines.torchvision.train.loop import WINDOW, MedianWindows, train_loop
from detco_bench.engines.torchvision.train.metrics_log import MetricsLog

MAX_ITER = 47  # logged at 1, 20, 40 and 47: windows of 1, 20, 20 and 20 iterations


def loss_a(i: int) -> float:
    """Iteration i's first loss term: a permutation-like sequence, far from its running mean."""
    return float((7 * i) % 23)


def loss_b(i: int) -> float:
    return 0.5 + 0.25 * ((5 * i) % 11)


class ScriptedLosses(nn.Module):
    """A model whose loss dict at its i-th call is {loss_a(i), loss_b(i)}, with a gradient path."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, images: list[torch.Tensor], targets: list[Any]) -> dict[str, torch.Tensor]:
        i, self.calls = self.calls, self.calls + 1
        return {"loss_a": self.w * 0 + loss_a(i), "loss_b": self.w * 0 + loss_b(i)}


def batches() -> Iterator[tuple[list[torch.Tensor], list[Any]]]:
    while True:
        yield [torch.zeros(1)], [{}]


def run_loop(out: Path) -> list[dict[str, Any]]:
    s = Settings({"SOLVER": {"MAX_ITER": MAX_ITER, "BASE_LR": 0.1, "CHECKPOINT_PERIOD": 0, "STEPS": [30],
                             "WARMUP_ITERS": 5}})
    model = ScriptedLosses()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    log = MetricsLog(out, rank=0, start_iter=0, tensorboard=False)
    train_loop(model, optimizer, batches(), s, start_iter=0, device=torch.device("cpu"),
               checkpointer=Checkpointer(out), log=log, logger=lambda m: None)
    log.close()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_logged_losses_are_medians_over_the_last_20_iterations(tmp_path: Path) -> None:
    lines = run_loop(tmp_path)
    assert [ln["step"] for ln in lines] == [1, 20, 40, 47]
    for line in lines:
        window = range(max(0, line["step"] - WINDOW), line["step"])
        assert line["loss_a"] == statistics.median(loss_a(i) for i in window)
        assert line["loss_b"] == statistics.median(loss_b(i) for i in window)
        # total_loss: the median of the per-iteration sums, not the sum of the medians
        assert line["total_loss"] == statistics.median(loss_a(i) + loss_b(i) for i in window)
        assert set(line) >= {"lr", "data_time"}
    last = lines[-1]
    assert last["loss_a"] != loss_a(MAX_ITER - 1)  # not the last iteration's own value
    assert last["total_loss"] != last["loss_a"] + last["loss_b"]
    assert "time" not in lines[0] and "time" in lines[1]  # the first two iterations are not timed
    assert lines[1]["lr"] == pytest.approx(0.1) and lines[-1]["lr"] == pytest.approx(0.01)  # own, not smoothed


def test_median_windows_keep_the_last_size_values() -> None:
    windows = MedianWindows(3)
    for value in (5.0, 1.0, 9.0, 2.0):
        windows.add("x", value)
    windows.add("y", 4.0)
    assert windows.medians() == {"x": 2.0, "y": 4.0}  # median of (1, 9, 2); y has one value


@pytest.mark.detectron2
def test_smoothing_equals_detectron2_event_storage(tmp_path: Path) -> None:
    """The same losses put into Detectron2's EventStorage as its SimpleTrainer does (total_loss, then
    the terms, each iteration) give, at every logged iteration, what metrics.jsonl holds."""
    from detectron2.utils.events import EventStorage

    lines = {ln["step"]: ln for ln in run_loop(tmp_path)}
    expected: dict[int, dict[str, float]] = {}
    with EventStorage(0) as storage:
        for i in range(MAX_ITER):
            storage.iter = i
            terms = {"loss_a": loss_a(i), "loss_b": loss_b(i)}
            storage.put_scalar("total_loss", sum(terms.values()))
            storage.put_scalars(**terms)
            if i + 1 in lines:
                expected[i + 1] = {k: v for k, (v, _) in storage.latest_with_smoothing_hint(WINDOW).items()}
    for step, d2 in expected.items():
        for key in ("loss_a", "loss_b", "total_loss"):
            assert lines[step][key] == pytest.approx(d2[key], rel=1e-12, abs=0), (step, key)
    assert sorted(expected) == [1, 20, 40, 47]
