"""What every synthetic layout writer shares: scene numbering, the default image size, file
writing (atomic image and compact json writes), the progress bar and the per-layout summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pretrain.atomic import atomic_write, atomic_write_bytes

DEFAULT_IMAGE_SIZE: tuple[int, int] = (128, 128)
"""(height, width) of generated images unless told otherwise."""

VAL_INDEX_OFFSET = 1 << 30
"""Evaluation scenes are `render_scene(seed, VAL_INDEX_OFFSET + j)`, disjoint from training scenes."""

PROGRESS_MIN_IMAGES = 200
"""A progress bar is shown (when asked for) once a layout writes at least this many images."""


def split_sizes(num_train: int, num_val: int) -> dict[str, int]:
    return {"train": num_train, "val": num_val}


def scene_index(split: str, i: int) -> int:
    """The `render_scene` index of image `i` of `split` ("train" or "val")."""
    return i if split == "train" else VAL_INDEX_OFFSET + i


def save_image(path: Path, image: np.ndarray | Image.Image, fmt: str) -> None:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    params: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda f: img.save(f, format=fmt, **params))


def write_json_compact(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode())


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled or total < PROGRESS_MIN_IMAGES:
        yield lambda: None
        return
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def layout_summary(layout: str, root: Path, num_train: int, num_val: int, classes: list[str],
                   paths: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {
        "layout": layout,
        "root": str(root),
        "counts": split_sizes(num_train, num_val),
        "classes": classes,
        "paths": {k: str(v) for k, v in paths.items()},
        **extra,
    }

