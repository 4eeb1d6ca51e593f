"""The ``imagefolder`` layout: ImageFolder / ImageNet style classification data
(``imagenet/{train,val}/<class>/*.png``), every image one large object of its class over clutter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detco_bench.synthetic.common import (
    DEFAULT_IMAGE_SIZE,
    layout_summary,
    progress_bar,
    save_image,
    scene_index,
    split_sizes,
)
from pretrain.synthetic import CLASS_NAMES, TEXTURES, _shape_mask, _texture

CLASSIFICATION_STREAM = 0x1C1A55
"""Extra seed word separating classification images from detection scenes."""

def render_classification_image(seed: int, index: int, class_id: int, height: int = 128,
                                width: int = 128) -> np.ndarray:
    """An (H, W, 3) uint8 image dominated by one large object of `class_id`.

    The background is drawn like `render_scene`'s; one to three small clutter objects of random
    classes go underneath a single object of `class_id` whose radius is 30-42% of the short side,
    so the label is the class of the largest (and only large) object.
    """
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class_id must be in [0, {len(CLASS_NAMES)}), got {class_id}")
    rng = np.random.default_rng([seed, CLASSIFICATION_STREAM, index, class_id])
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, size=3)
    gradient = (yy / max(height - 1, 1))[..., None] * rng.integers(-40, 40, size=3)
    noise = rng.normal(0.0, 12.0, size=(height, width, 3))
    canvas = np.clip(base + gradient + noise, 0, 255)
    short = min(height, width)

    def draw(cid: int, r: float, cx: float, cy: float) -> None:
        nonlocal canvas
        mask = _shape_mask(cid, yy, xx, cx, cy, r)
        color_a = rng.integers(0, 256, size=3)
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        fill = _texture(kind, yy, xx, color_a, 255 - color_a, period=int(rng.integers(3, 9)))
        canvas = np.where(mask[..., None], fill, canvas)

    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(0.06, 0.10) * short)
        draw(int(rng.integers(len(CLASS_NAMES))), r, float(rng.uniform(r, width - r)),
             float(rng.uniform(r, height - r)))
    r = float(rng.uniform(0.30, 0.42) * short)
    cx = float(np.clip(width / 2 + rng.uniform(-0.12, 0.12) * width, r, width - r))
    cy = float(np.clip(height / 2 + rng.uniform(-0.12, 0.12) * height, r, height - r))
    draw(class_id, r, cx, cy)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def write_imagefolder(out: Path, *, num_train: int, num_val: int, seed: int = 0,
                      image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                      progress: bool = False) -> dict[str, Any]:
    """Classification data as ``out/imagenet/{train,val}/<class>/<class>_<index>.png``.

    Image i of a split has class ``i % 4`` (balanced up to one image per class). Note that
    torchvision's ImageFolder numbers classes by sorted folder name (circle, ring, square,
    triangle), not in `CLASS_NAMES` order.
    """
    root = Path(out) / "imagenet"
    h, w = image_size
    with progress_bar(num_train + num_val, "imagefolder", progress) as advance:
        for split, n in split_sizes(num_train, num_val).items():
            for i in range(n):
                cid = i % len(CLASS_NAMES)
                image = render_classification_image(seed, scene_index(split, i), cid, h, w)
                name = CLASS_NAMES[cid]
                save_image(root / split / name / f"{name}_{i:06d}.png", image, "PNG")
                advance()
    paths = {s: root / s for s in ("train", "val")}
    return layout_summary("imagefolder", root, num_train, num_val, list(CLASS_NAMES), paths)

