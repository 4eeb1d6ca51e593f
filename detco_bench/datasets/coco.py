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
