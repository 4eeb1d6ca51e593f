"""Checkpoints and resume of the torchvision engine.

``model_<iter:07d>.pth`` every CHECKPOINT_PERIOD iterations and ``model_final.pth``, written
atomically by rank 0, named in ``last_checkpoint`` (the file detco-bench's transfer state looks
for). After each save only the newest `keep` periodic files stay (``--keep-checkpoints``; 0 keeps
all); ``model_final.pth`` and the file ``last_checkpoint`` names are never deleted. A checkpoint
holds the model, optimizer, grad scaler, the number of completed iterations, every rank's torch
RNG state and every rank's `RankState` modules (e.g. RetinaNet's loss-normaliser EMA), so a
resumed run continues at exactly the saved iteration with the same data order, augmentation and
loss scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from detco_bench.engines.torchvision.distributed import gather_to_main
from pretrain.atomic import atomic_torch_save, atomic_write_text

CHECKPOINT_FORMAT = "detco-bench.torchvision-transfer"


LAST_CHECKPOINT = "last_checkpoint"


FINAL_NAME = "model_final.pth"


def periodic_checkpoints(out: Path) -> list[Path]:
    """The periodic checkpoints in `out`, oldest first (their names are zero-padded, so sorting
    them sorts by iteration; model_final.pth does not match)."""
    return sorted(out.glob("model_[0-9]*.pth"))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@runtime_checkable
class RankState(Protocol):
    """A module with per-process training state that is neither a parameter nor a buffer (so it
    stays out of the state dict and differs between processes)."""

    def rank_state(self) -> dict[str, float]: ...

    def load_rank_state(self, state: dict[str, float]) -> None: ...


def _module_states(model: nn.Module) -> dict[str, dict[str, float]]:
    return {name: m.rank_state() for name, m in unwrap(model).named_modules() if isinstance(m, RankState)}


def _load_module_states(model: nn.Module, states: dict[str, dict[str, float]]) -> None:
    for name, m in unwrap(model).named_modules():
        if isinstance(m, RankState) and name in states:
            m.load_rank_state(states[name])


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model


class Checkpointer:
    """Periodic and final checkpoints in `out` (rank 0 writes; every rank reads)."""

    def __init__(self, out: str | Path, rank: int = 0, world: int = 1, meta: dict[str, Any] | None = None,
                 keep: int = 0) -> None:
        self.out = Path(out)
        self.keep = keep  # periodic checkpoints kept (the newest); 0: all
        self.rank = rank
        self.world = world
        self.meta = dict(meta or {})
        self._pending_rng: dict[str, Any] | None = None

    def last(self) -> Path | None:
        """The checkpoint ``last_checkpoint`` names, if it exists."""
        pointer = self.out / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        path = self.out / name
        return path if name and path.is_file() else None

    def save(
        self,
        name: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scaler: Any,
        iteration: int,
    ) -> Path | None:
        """Write checkpoint `name` after `iteration` completed iterations and point ``last_checkpoint`` at
        it. Every rank must call it (the RNG states are gathered); returns the path on rank 0."""
        per_rank = gather_to_main({"rng": _rng_state(), "modules": _module_states(model)})
        if self.rank != 0:
            return None
        assert per_rank is not None
        data = {
            "format": CHECKPOINT_FORMAT,
            "iteration": int(iteration),
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": [r["rng"] for r in per_rank],
            "rank_state": [r["modules"] for r in per_rank],
            **self.meta,
        }
        path = self.out / name
        atomic_torch_save(path, data)
        atomic_write_text(self.out / LAST_CHECKPOINT, name)
        self._prune(path)
        return path

    def _prune(self, saved: Path) -> None:
        """Delete the periodic checkpoints beyond the newest `keep` (after `saved` is named in
        ``last_checkpoint``, so a kill in between leaves a resumable folder)."""
        if not self.keep:
            return
        for old in periodic_checkpoints(self.out)[:-self.keep]:
            if old != saved:
                old.unlink(missing_ok=True)

    def load(
        self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scaler: Any
    ) -> int:
        """Restore the model, optimizer, scaler and this rank's `RankState` modules from `path`;
        returns the number of completed iterations. The RNG state is restored by `restore_rng`,
        called right before the first iteration (building the data loader's iterator draws from the
        global RNG)."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a torchvision-engine checkpoint (format {data.get('format')!r})")
        unwrap(model).load_state_dict(data["model"])
        if optimizer is not None and data.get("optimizer"):
            optimizer.load_state_dict(data["optimizer"])
        if scaler is not None and data.get("scaler"):
            scaler.load_state_dict(data["scaler"])
        rngs = data.get("rng") or []
        self._pending_rng = rngs[self.rank] if self.rank < len(rngs) else None
        states = data.get("rank_state") or []
        if self.rank < len(states):
            _load_module_states(model, states[self.rank])
        return int(data["iteration"])

    def restore_rng(self) -> None:
        """Put back the RNG state saved with the checkpoint that `load` read (once)."""
        _set_rng_state(self._pending_rng)
        self._pending_rng = None
