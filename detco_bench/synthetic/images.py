"""The ``images`` layout: unlabeled scenes as ``images/{train,val}/<index>.png`` (pretraining data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detco_bench.synthetic.common import (
    DEFAULT_IMAGE_SIZE,
    layout_summary,
    progress_bar,
    save_image,
    scene_index,
    split_sizes,
)
from pretrain.synthetic import render_scene


def write_images(out: Path, *, num_train: int, num_val: int, seed: int = 0,
                 image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, progress: bool = False) -> dict[str, Any]:
    """Unlabeled scenes as ``out/images/{train,val}/<index>.png`` (pretraining data)."""
    root = Path(out) / "images"
    h, w = image_size
    with progress_bar(num_train + num_val, "images", progress) as advance:
        for split, n in split_sizes(num_train, num_val).items():
            for i in range(n):
                scene = render_scene(seed, scene_index(split, i), h, w)
                save_image(root / split / f"{i:06d}.png", scene.image, "PNG")
                advance()
    paths = {s: root / s for s, n in split_sizes(num_train, num_val).items() if n}
    return layout_summary("images", root, num_train, num_val, [], paths)
