"""How a linear evaluation is named: its probe, its record's task and its dataset label."""

from __future__ import annotations

from pathlib import Path

from detco_bench.linear.config import MODES
from detco_bench.task_label import TaskLabel

#: The name of each linear mode's probe (the base of its records' task labels, its pipeline jobs' names).
PROBE_NAMES = {mode: f"linear_{mode}" for mode in MODES}


def probe_name(mode: str) -> str:
    """``linear_knn`` for mode ``knn``."""
    return PROBE_NAMES[mode]


def task_name(mode: str, dataset: str) -> str:
    """`linear_protocol` on ImageNet is the paper's number; elsewhere the dataset is in the name,
    so a probe on another dataset is never compared with the ImageNet reference."""
    return str(TaskLabel(probe_name(mode), variant=None if dataset == "imagenet" else dataset))


def default_dataset_name(data: Path, classes: int) -> str:
    """"imagenet" only for a 1000-class dataset; otherwise the folder's name (never plain "imagenet")."""
    if classes == 1000:
        return "imagenet"
    name = data.resolve().name
    return f"{name}-{classes}classes" if name.lower() == "imagenet" else name
