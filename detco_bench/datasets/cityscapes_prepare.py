"""`detco-bench data prepare cityscapes`: the derived Cityscapes ground-truth files.

cityscapesScripts' createTrainIdLabelImgs (``*_gtFine_labelTrainIds.png``) and, on request, the
``*_gtFine_instanceIds.png`` files, rendered from the ``*_polygons.json`` annotations.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image

from detco_bench.errors import UserError
from pretrain.atomic import atomic_write_bytes


def cityscapes_root(root: str | os.PathLike) -> Path:
    """Accept the Cityscapes folder itself or a DETECTRON2_DATASETS root that contains it."""
    root = Path(root).expanduser()
    if (root / "gtFine").is_dir():
        return root
    if (root / "cityscapes" / "gtFine").is_dir():
        return root / "cityscapes"
    raise UserError(f"no gtFine/ folder in {root} (nor in {root / 'cityscapes'}): not a Cityscapes root")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_train_ids(json_file: str) -> str:
    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    image = createLabelImage(annotation, "trainIds")
    dst = json_file.replace("_polygons.json", "_labelTrainIds.png")
    atomic_write_bytes(dst, _png_bytes(np.asarray(image, dtype=np.uint8)))
    return dst


def _make_instance_ids(json_file: str) -> str:
    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    # cityscapesScripts draws into a 32-bit "I" image and saves it as PNG, which Pillow >= 13
    # refuses ("cannot write mode I as PNG"). Label ids * 1000 + k stay below 34000, so the same
    # values are written as a 16-bit PNG, which is what the official files are.
    values = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
    if values.max() > np.iinfo(np.uint16).max:
        raise UserError(f"{json_file}: instance ids exceed 16 bits")
    dst = json_file.replace("_polygons.json", "_instanceIds.png")
    atomic_write_bytes(dst, _png_bytes(values.astype(np.uint16)))
    return dst


def prepare_cityscapes(
    root: str | os.PathLike,
    *,
    instance_ids: bool = False,
    force: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """cityscapesScripts' createTrainIdLabelImgs: ``*_gtFine_labelTrainIds.png`` for every
    ``gtFine/*/*/*_gt*_polygons.json`` (and gtCoarse when present), with cityscapesScripts'
    json2labelImg rendering. Existing outputs are kept unless `force`; files are written atomically.

    `instance_ids`: also create missing ``*_gtFine_instanceIds.png`` (cityscapesScripts'
    json2instanceImg rendering with "ids" encoding, saved as 16-bit PNG; see `_make_instance_ids`).
    Returns counts per output kind.
    """
    root = cityscapes_root(root)
    files = sorted(str(p) for p in root.glob("gtFine/*/*/*_gt*_polygons.json"))
    files += sorted(str(p) for p in root.glob("gtCoarse/*/*/*_gt*_polygons.json"))
    if not files:
        raise UserError(f"no gtFine/<split>/<city>/*_polygons.json files under {root}")
    jobs: list[tuple[Callable[[str], str], str]] = []
    skipped = {"labelTrainIds": 0, "instanceIds": 0}
    for f in files:
        if force or not Path(f.replace("_polygons.json", "_labelTrainIds.png")).exists():
            jobs.append((_make_train_ids, f))
        else:
            skipped["labelTrainIds"] += 1
        if instance_ids:
            if force or not Path(f.replace("_polygons.json", "_instanceIds.png")).exists():
                jobs.append((_make_instance_ids, f))
            else:
                skipped["instanceIds"] += 1
    written = {"labelTrainIds": 0, "instanceIds": 0}
    done = 0

    def count(dst: str) -> None:
        nonlocal done
        written["instanceIds" if dst.endswith("_instanceIds.png") else "labelTrainIds"] += 1
        done += 1
        if progress is not None:
            progress(done, len(jobs))

    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for dst in pool.imap_unordered(_run_job, jobs, chunksize=8):
                count(dst)
    else:
        for job in jobs:
            count(_run_job(job))
    return {"root": str(root), "polygon_files": len(files), "written": written, "skipped_existing": skipped}


def _run_job(job: tuple[Callable[[str], str], str]) -> str:
    fn, arg = job
    return fn(arg)
