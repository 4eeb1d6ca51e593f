"""The engine's image records and what is known about a dataset's labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: One image: see `detco_bench.engines.torchvision.data` for the keys.
Record = dict[str, Any]


@dataclass
class DatasetMeta:
    """What the model and the evaluators need to know about a dataset's labels."""

    classes: list[str]
    category_ids: list[int] | None = None  # COCO json category id of each contiguous class
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_flip: list[int] = field(default_factory=list)  # index permutation of a horizontal flip
    keypoint_oks_sigmas: list[float] = field(default_factory=list)


def filter_training_records(
    records: list[Record], *, filter_empty: bool, min_keypoints: int = 0
) -> list[Record]:
    """Detectron2's training filters: images without (non-crowd) annotations, and for keypoint
    tasks images with fewer than MIN_KEYPOINTS_PER_IMAGE visible keypoints."""
    out = []
    for r in records:
        if "annotations" not in r:
            out.append(r)
            continue
        anns = [a for a in r["annotations"] if not a.get("iscrowd")]
        if filter_empty and not anns:
            continue
        if min_keypoints > 0:
            visible = sum(sum(1 for v in a.get("keypoints", [])[2::3] if v > 0) for a in anns)
            if visible < min_keypoints:
                continue
        out.append(r)
    return out

