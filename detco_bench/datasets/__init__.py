"""Datasets of the transfer tasks, independent of any engine.

* `spec`: `DatasetSpec` (where one named dataset lives, the metadata an engine needs to register
  it) and the data root rule (`data_root`).
* `builtin`: the names used in the configs -> Detectron2's folder layout below a data root.
* `coco`, `voc`, `keypoints`: a user's COCO json and its categories; VOC class names; COCO person
  keypoint metadata and left/right flip pairs.
* `cityscapes`: the 8 instance / 19 semantic classes and readers of the official gtFine files;
  `cityscapes_prepare`: ``detco-bench data prepare cityscapes``.
* `checks`: `check_dataset`, what is missing, named precisely, before anything is launched.
* `synthetic`: recognising a root written by `detco-bench data synthetic`.

Both engines use these: the Detectron2 engine registers the dicts in its DatasetCatalog, the
torchvision engine builds its datasets from the same specs.
"""

from detco_bench.datasets.builtin import BUILTIN_DATASETS, builtin_dataset
from detco_bench.datasets.checks import check_dataset
from detco_bench.datasets.cityscapes import (
    CITYSCAPES_STUFF_CLASSES,
    CITYSCAPES_THING_CLASSES,
    CITYSCAPES_THING_IDS,
    CITYSCAPES_TRAINID_TO_ID,
    cityscapes_files,
    load_cityscapes_instances,
    load_cityscapes_semantic,
)
from detco_bench.datasets.cityscapes_prepare import cityscapes_root, prepare_cityscapes
from detco_bench.datasets.coco import custom_coco_dataset, read_coco_categories
from detco_bench.datasets.keypoints import (
    COCO_PERSON_FLIP_MAP,
    COCO_PERSON_KEYPOINTS,
    COCO_PERSON_OKS_SIGMAS,
    coco_person_keypoint_meta,
    dataset_flip_map,
    keypoint_flip_map,
)
from detco_bench.datasets.spec import DATA_ROOT_ENV, KINDS, DatasetSpec, data_root
from detco_bench.datasets.synthetic import SYNTHETIC_GENERATOR, SYNTHETIC_MANIFEST, synthetic_manifest
from detco_bench.datasets.voc import VOC_CLASSES

__all__ = [
    "BUILTIN_DATASETS",
    "CITYSCAPES_STUFF_CLASSES",
    "CITYSCAPES_THING_CLASSES",
    "CITYSCAPES_THING_IDS",
    "CITYSCAPES_TRAINID_TO_ID",
    "COCO_PERSON_FLIP_MAP",
    "COCO_PERSON_KEYPOINTS",
    "COCO_PERSON_OKS_SIGMAS",
    "DATA_ROOT_ENV",
    "KINDS",
    "SYNTHETIC_GENERATOR",
    "SYNTHETIC_MANIFEST",
    "VOC_CLASSES",
    "DatasetSpec",
    "builtin_dataset",
    "check_dataset",
    "cityscapes_files",
    "cityscapes_root",
    "coco_person_keypoint_meta",
    "custom_coco_dataset",
    "data_root",
    "dataset_flip_map",
    "keypoint_flip_map",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "prepare_cityscapes",
    "read_coco_categories",
    "synthetic_manifest",
]
