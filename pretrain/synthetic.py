"""Deterministic synthetic scenes: a few classes of textured shapes on noisy backgrounds.

One renderer serves every consumer. Pretraining uses the images alone; the harness
(`detco_bench.synthetic_layouts`) writes the same scenes as COCO / VOC / Cityscapes / ImageFolder
datasets using the per-object annotations returned here. A scene is a pure function of
(seed, index, size), so datasets can be regenerated bit-for-bit anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "ring")
"""Object classes; the class id of an object is its index in this tuple."""

KEYPOINT_NAMES: tuple[str, ...] = ("top", "right", "bottom", "left")
"""Every object carries its four extreme points as keypoints, in this order."""

TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker")


@dataclass(frozen=True)
class SceneObject:
    class_id: int
    mask: np.ndarray  # (H, W) bool, the visible pixels of this object after occlusion
    bbox_xyxy: tuple[float, float, float, float]  # tight box of `mask`, pixel-edge coordinates
    keypoints: np.ndarray  # (4, 3) float: x, y, visibility (2 visible, 1 occluded) per KEYPOINT_NAMES


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: tuple[SceneObject, ...]  # in drawing order (later ones occlude earlier ones)

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image, mode="RGB")


def _shape_mask(class_id: int, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    name = CLASS_NAMES[class_id]
    if name == "circle":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if name == "triangle":  # apex up, base at cy + r/2: inside when below both slanted edges
        return (dy <= r * 0.5) & (dy >= -r + 1.732 * np.abs(dx))
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown class id {class_id}")


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, color_a: np.ndarray, color_b: np.ndarray,
             period: int) -> np.ndarray:
    if kind == "solid":
        pattern = np.zeros(yy.shape, dtype=bool)
    elif kind == "stripes":
        pattern = ((xx + yy) // period) % 2 == 1
    else:
        pattern = ((xx // period) + (yy // period)) % 2 == 1
    return np.where(pattern[..., None], color_b, color_a)


def _extreme_points(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    top = np.argmin(ys)
    bottom = np.argmax(ys)
    left = np.argmin(xs)
    right = np.argmax(xs)
    pts = [(xs[top], ys[top]), (xs[right], ys[right]), (xs[bottom], ys[bottom]), (xs[left], ys[left])]
    return np.array([[x + 0.5, y + 0.5, 2.0] for x, y in pts], dtype=np.float32)


def render_scene(seed: int, index: int, height: int = 128, width: int = 128,
                 min_objects: int = 2, max_objects: int = 5) -> Scene:
    """Render scene `index` of the dataset identified by `seed`.

    Objects are placed at random scales (radius 8%-22% of the short side); an object that ends up
    with fewer than 30 visible pixels after occlusion is dropped from the annotations (its pixels
    stay in the image, as background clutter would).
    """
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, size=3)
    gradient = (yy / max(height - 1, 1))[..., None] * rng.integers(-40, 40, size=3)
    noise = rng.normal(0.0, 12.0, size=(height, width, 3))
    canvas = np.clip(base + gradient + noise, 0, 255)

    drawn: list[tuple[int, np.ndarray, np.ndarray]] = []
    short = min(height, width)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        class_id = int(rng.integers(len(CLASS_NAMES)))
        r = float(rng.uniform(0.08, 0.22) * short)
        cx = float(rng.uniform(r, width - r))
        cy = float(rng.uniform(r, height - r))
        mask = _shape_mask(class_id, yy, xx, cx, cy, r)
        if mask.sum() < 30:
            continue
        color_a = rng.integers(0, 256, size=3)
        color_b = 255 - color_a
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        fill = _texture(kind, yy, xx, color_a, color_b, period=int(rng.integers(3, 9)))
        canvas = np.where(mask[..., None], fill, canvas)
        keypoints = _extreme_points(mask)
        # Earlier objects lose the pixels this one covers.
        drawn = [(c, m & ~mask, k) for c, m, k in drawn]
        drawn.append((class_id, mask, keypoints))

    objects = []
    for class_id, mask, keypoints in drawn:
        if mask.sum() < 30:
            continue
        ys, xs = np.nonzero(mask)
        kp = keypoints.copy()
        for j, (x, y, _) in enumerate(kp):
            if not mask[int(y), int(x)]:
                kp[j, 2] = 1.0
        bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        objects.append(SceneObject(class_id, mask, bbox, kp))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return Scene(image=image, objects=tuple(objects))
