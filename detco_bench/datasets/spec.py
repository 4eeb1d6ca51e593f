"""`DatasetSpec`: where one named dataset lives and what an engine needs to register it.

Also the data root rule (`data_root`: an explicit root, else $DETECTRON2_DATASETS, else
./datasets) and the dataset kinds an engine has to handle (`KINDS`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DATA_ROOT_ENV = "DETECTRON2_DATASETS"

KINDS: tuple[str, ...] = ("coco", "voc", "cityscapes_instance", "cityscapes_sem_seg")


@dataclass
class DatasetSpec:
    """One named dataset: where its files are and what an engine needs to register it.

    kind: "coco" (json_file + image_root; keypoints=True for person-keypoint files), "voc"
    (voc_dir with Annotations/ImageSets/JPEGImages, split, year), "cityscapes_instance" /
    "cityscapes_sem_seg" (image_root = leftImg8bit/<split>, gt_dir = gtFine/<split>).
    meta: registration metadata; "thing_classes" (VOC, synthetic data), "keypoint_names",
    "keypoint_flip_map", "keypoint_connection_rules", "keypoint_oks_sigmas" (keypoint data).
    subset: for a semi-supervised subset, {"source", "fraction", "seed"}; json_file is then the
    generated subset file (written by the plan's prepare step).
    """

    name: str
    kind: str
    split: str
    image_root: str
    json_file: str | None = None
    keypoints: bool = False
    voc_dir: str | None = None
    year: str | None = None
    gt_dir: str | None = None
    subset: dict[str, Any] | None = None
    custom: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        return cls(**data)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: `root`, else $DETECTRON2_DATASETS, else ./datasets (Detectron2's rule)."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    return Path(os.environ.get(DATA_ROOT_ENV, "datasets")).expanduser()
