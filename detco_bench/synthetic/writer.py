"""`write_synthetic_dataset`: the entry point that writes one layout or all of them below an output
root, checks the arguments, replaces earlier output on request and records the manifest.

The manifest (``synthetic_dataset.json``) lists what was generated, with which arguments and which
folders each layout owns; its name and ``"generator"`` tag are defined once, in
`detco_bench.datasets.synthetic`, which recognises such roots when they are read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detco_bench.datasets.synthetic import SYNTHETIC_GENERATOR, SYNTHETIC_MANIFEST
from detco_bench.errors import UserError
from detco_bench.paths import check_output_folder
from detco_bench.synthetic.cityscapes import write_cityscapes
from detco_bench.synthetic.coco import write_coco
from detco_bench.synthetic.common import DEFAULT_IMAGE_SIZE, split_sizes
from detco_bench.synthetic.imagefolder import write_imagefolder
from detco_bench.synthetic.images import write_images
from detco_bench.synthetic.voc import write_voc
from pretrain.atomic import atomic_write_json
from pretrain.synthetic import CLASS_NAMES

LAYOUTS: tuple[str, ...] = ("images", "imagefolder", "coco", "voc", "cityscapes")
"""Layouts `write_synthetic_dataset` writes; ``"all"`` writes every one of them."""

MIN_SIDE, MAX_SIDE = 32, 4096
MAX_IMAGES_PER_SPLIT = 999_999

MANIFEST_NAME = SYNTHETIC_MANIFEST
"""Written at the output root: what was generated and with which arguments (relative paths only)."""


WRITERS: dict[str, Callable[..., dict[str, Any]]] = {
    "images": write_images,
    "imagefolder": write_imagefolder,
    "coco": write_coco,
    "voc": write_voc,
    "cityscapes": write_cityscapes,
}

LAYOUT_FOLDERS: dict[str, tuple[str, ...]] = {
    "images": ("images",),
    "imagefolder": ("imagenet",),
    "coco": ("coco",),
    "voc": ("VOC2007", "VOC2012"),
    "cityscapes": ("cityscapes",),
}
"""Folders under the output root that each layout owns."""


def parse_image_size(text: str) -> tuple[int, int]:
    """``"96x128"`` -> (96, 128) as (height, width); raises UserError on anything else."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--size must look like HEIGHTxWIDTH (e.g. 96x128), got {text!r}")
    return int(parts[0]), int(parts[1])


def _validate(layout: str, num_train: int, num_val: int, image_size: tuple[int, int]) -> None:
    if layout != "all" and layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)} or all")
    for name, n in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES_PER_SPLIT:
            raise UserError(f"{name} must be an integer in [1, {MAX_IMAGES_PER_SPLIT}], got {n!r}")
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image size must be (height, width), got {image_size!r}") from None
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise UserError(f"image size {h}x{w} out of range: each side must be in [{MIN_SIDE}, {MAX_SIDE}]")


def _prepare_output(out: Path, layouts: list[str], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"output folder {out} is not empty; choose another --out or pass --force")
        # Replace only folders that an earlier run of this writer recorded in its manifest.
        manifest = out / MANIFEST_NAME
        try:
            previous = json.loads(manifest.read_text()).get("folders", []) if manifest.is_file() else []
        except (OSError, ValueError):
            previous = []
        ours = {f for lay in layouts for f in LAYOUT_FOLDERS[lay]}
        for folder in previous:
            if folder in ours and (out / folder).is_dir():
                shutil.rmtree(out / folder)
    out.mkdir(parents=True, exist_ok=True)


def write_synthetic_dataset(out: str | os.PathLike, layout: str, *, num_train: int, num_val: int,
                            seed: int = 0, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                            force: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write `layout` ("images", "imagefolder", "coco", "voc", "cityscapes" or "all") under `out`.

    Refuses a non-empty `out` unless `force`; with `force`, layout folders written earlier by this
    function (listed in ``out/synthetic_dataset.json``) are replaced and anything else is left in
    place. Returns a summary: root, per-layout paths, counts and classes (for "all", one summary per
    layout under "layouts"). Identical arguments give byte-identical files.
    """
    _validate(layout, num_train, num_val, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    out = check_output_folder(out)
    layouts = list(LAYOUTS) if layout == "all" else [layout]
    _prepare_output(out, layouts, force)
    summaries = {}
    for lay in layouts:
        summaries[lay] = WRITERS[lay](out, num_train=num_train, num_val=num_val, seed=seed,
                                      image_size=image_size, progress=progress)
    manifest = {
        "generator": SYNTHETIC_GENERATOR,
        "layouts": layouts,
        "folders": sorted({f for lay in layouts for f in LAYOUT_FOLDERS[lay]}),
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "image_size": list(image_size),
        "classes": list(CLASS_NAMES),
    }
    atomic_write_json(out / MANIFEST_NAME, manifest)
    if layout != "all":
        return {**summaries[layout], "manifest": str(out / MANIFEST_NAME)}
    return {
        "layout": "all",
        "root": str(out),
        "counts": split_sizes(num_train, num_val),
        "classes": list(CLASS_NAMES),
        "layouts": summaries,
        "manifest": str(out / MANIFEST_NAME),
    }


def describe(summary: dict[str, Any]) -> str:
    """One line saying what `write_synthetic_dataset` wrote and where."""
    counts = summary["counts"]
    what = ", ".join(summary["layouts"]) if summary["layout"] == "all" else summary["layout"]
    return (f"wrote synthetic {what} ({counts['train']} train / {counts['val']} val images) "
            f"to {summary['root']}")
