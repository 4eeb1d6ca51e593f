"""Keypoint metadata: the 17 COCO person keypoints (names, flip pairs, COCOeval's OKS sigmas) and
the left/right pairs of any list of keypoint names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

COCO_PERSON_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_PERSON_FLIP_MAP: tuple[tuple[str, str], ...] = tuple(
    (name, "right_" + name[len("left_") :]) for name in COCO_PERSON_KEYPOINTS if name.startswith("left_")
)
#: COCOeval's default OKS sigmas for the 17 COCO person keypoints.
COCO_PERSON_OKS_SIGMAS: tuple[float, ...] = (
    0.26,
    0.25,
    0.25,
    0.35,
    0.35,
    0.79,
    0.79,
    0.72,
    0.72,
    0.62,
    0.62,
    1.07,
    1.07,
    0.87,
    0.87,
    0.89,
    0.89,
)

def coco_person_keypoint_meta() -> dict[str, Any]:
    return {
        "keypoint_names": list(COCO_PERSON_KEYPOINTS),
        "keypoint_flip_map": [list(p) for p in COCO_PERSON_FLIP_MAP],
        "keypoint_oks_sigmas": list(COCO_PERSON_OKS_SIGMAS),
    }



def keypoint_flip_map(names: Iterable[str]) -> list[list[str]]:
    """left_*/right_* (and 'left'/'right') pairs among keypoint names: what a horizontal flip swaps."""
    names = list(names)
    pairs = []
    for n in names:
        if n.startswith("left"):
            twin = "right" + n[len("left") :]
            if twin in names:
                pairs.append([n, twin])
    return pairs


def dataset_flip_map(meta: Mapping[str, Any], names: Iterable[str]) -> list[list[str]]:
    """The flip pairs of a keypoint dataset: its metadata's ``keypoint_flip_map``, else the
    left/right pairs among its keypoint `names` (both engines read them through this)."""
    return [list(p) for p in meta.get("keypoint_flip_map") or keypoint_flip_map(names)]
