"""``metrics.jsonl`` and TensorBoard (``tb/``) of a torchvision-engine run, on rank 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text

try:
    from torch.utils.tensorboard import SummaryWriter
except Exception:  # noqa: BLE001 - tensorboard missing or broken: metrics.jsonl still works
    SummaryWriter = None


METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """metrics.jsonl + TensorBoard on rank 0 (no-ops elsewhere).

    A training run opens it at `start_iter`, dropping what an interrupted attempt logged after that
    iteration (or, from iteration 0, the old log); ``append=True`` only adds lines (the final
    evaluation's metrics after training)."""

    def __init__(self, out: Path, rank: int, start_iter: int, tensorboard: bool = True, append: bool = False) -> None:
        self.enabled = rank == 0
        self.path = out / METRICS_FILE
        self.tb: Any = None
        if not self.enabled:
            return
        if not append:
            self._restart(start_iter)
        if tensorboard and SummaryWriter is not None:
            try:
                purge = start_iter if start_iter > 0 and not append else None
                self.tb = SummaryWriter(str(out / "tb"), purge_step=purge)
            except Exception:  # noqa: BLE001 - a broken tensorboard install: metrics.jsonl still works
                self.tb = None

    def _restart(self, start_iter: int) -> None:
        if start_iter > 0 and self.path.is_file():
            # Drop what an interrupted attempt logged after its last checkpoint.
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= start_iter:
                        kept.append(line)
                except (ValueError, AttributeError):
                    continue
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        elif start_iter == 0 and self.path.exists():
            self.path.unlink()

    def write(self, step: int, values: dict[str, float]) -> None:
        """One metrics.jsonl line (and TensorBoard scalars, under ``train/`` unless named with a ``/``)."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        """TensorBoard scalars only, under ``<prefix>/``."""
        if self.enabled and self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
