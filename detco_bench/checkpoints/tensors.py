"""Checkpoint values as torch tensors: a pickle or a read-back Detectron2 .pkl stores numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_tensor(value: Any) -> torch.Tensor:
    """`value` itself when it is a tensor, else a tensor sharing the memory of ``np.asarray(value)``."""
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
