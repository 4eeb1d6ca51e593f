"""How a linear-evaluation record is named: its task and its dataset label."""

from __future__ import annotations

from pathlib import Path

from detco_bench.task_label import TaskLabel


def task_name(mode: str, dataset: str) -> str:
    """`linear_protocol` on ImageNet is the paper's number; elsewhere the dataset is in the name,
    so a probe on another dataset is never compared with the ImageNet reference."""
    base = {"protocol": "linear_protocol", "fast": "linear_fast", "knn": "linear_knn",
            "stages": "linear_stages"}[mode]
    return str(TaskLabel(base, variant=None if dataset == "imagenet" else dataset))


def default_dataset_name(data: Path, classes: int) -> str:
    """"imagenet" only for a 1000-class dataset; otherwise the folder's name (never plain "imagenet")."""
    if classes == 1000:
        return "imagenet"
    name = data.resolve().name
    return f"{name}-{classes}classes" if name.lower() == "imagenet" else name
