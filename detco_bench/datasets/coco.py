"""COCO-format datasets: a user's own COCO json (``--train-json/--val-json/--images``) and the
categories of such a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from detco_bench.datasets.spec import DatasetSpec
from detco_bench.errors import UserError


def custom_coco_dataset(
    name: str, json_file: str | os.PathLike, image_root: str | os.PathLike, keypoints: bool = False
) -> DatasetSpec:
    """A user's COCO-format dataset (``--train-json/--val-json/--images``)."""
    return DatasetSpec(
        name=name,
        kind="coco",
        split=name.rsplit("_", 1)[-1],
        image_root=str(image_root),
        json_file=str(json_file),
        keypoints=keypoints,
        custom=True,
    )


def read_coco_categories(json_file: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``categories`` of a COCO-format json (the whole file is parsed: use on small files)."""
    try:
        data = json.loads(Path(json_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {json_file}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {json_file}: {exc}") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats:
        raise UserError(f"{json_file}: a COCO-format file needs a non-empty 'categories' list")
    return sorted(cats, key=lambda c: c["id"])


#: Files up to this size have their contents checked at plan time (COCO's own train json, 450 MB,
#: would take longer to parse than the check is worth; its contents are the reference's).
CONTENT_CHECK_MAX_BYTES = 64 << 20
_EXAMPLES = 3


def coco_content_problems(name: str, json_file: Path, image_root: Path) -> list[str]:
    """What makes a COCO-format json unusable for training or evaluation, found before a run
    starts: no images or annotations, annotations of unknown categories or images, image files
    missing under `image_root`. [] when usable (or too large to check here)."""
    if json_file.stat().st_size > CONTENT_CHECK_MAX_BYTES:
        return []
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{name}: cannot read {json_file}: {' '.join(str(exc).split())[:200]}"]
    if not isinstance(data, dict):
        return [f"{name}: {json_file} is not a COCO-format object"]
    images, annotations, categories = (data.get(k) or [] for k in ("images", "annotations", "categories"))
    problems = []
    if not images:
        problems.append(f"{name}: {json_file} lists no images")
    if not annotations:
        problems.append(f"{name}: {json_file} has no annotations")
    if not categories:
        problems.append(f"{name}: {json_file} has no categories")
    category_ids = {c.get("id") for c in categories if isinstance(c, dict)}
    image_ids = {i.get("id") for i in images if isinstance(i, dict)}
    unknown_cat = sorted({a.get("category_id") for a in annotations if a.get("category_id") not in category_ids},
                         key=str)
    if categories and unknown_cat:
        problems.append(f"{name}: {json_file}: annotations of unknown category id(s) {unknown_cat[:_EXAMPLES]}")
    unknown_img = sorted({a.get("image_id") for a in annotations if a.get("image_id") not in image_ids}, key=str)
    if images and unknown_img:
        problems.append(f"{name}: {json_file}: annotations of unknown image id(s) {unknown_img[:_EXAMPLES]}")
    missing = [i.get("file_name") for i in images if not (image_root / str(i.get("file_name"))).is_file()]
    if missing:
        problems.append(f"{name}: {len(missing)} image file(s) of {json_file} missing under {image_root}, e.g. "
                        + ", ".join(map(str, missing[:_EXAMPLES])))
    return problems
