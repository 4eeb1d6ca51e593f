"""Temporary shim: the datasets now live in `detco_bench.datasets`; import from there.

Re-exports only (``name as name``: explicit re-exports), so that importers not yet switched keep
working; to be deleted once they are.
"""

from detco_bench.datasets import BUILTIN_DATASETS as BUILTIN_DATASETS
from detco_bench.datasets import CITYSCAPES_STUFF_CLASSES as CITYSCAPES_STUFF_CLASSES
from detco_bench.datasets import CITYSCAPES_THING_CLASSES as CITYSCAPES_THING_CLASSES
from detco_bench.datasets import CITYSCAPES_THING_IDS as CITYSCAPES_THING_IDS
from detco_bench.datasets import CITYSCAPES_TRAINID_TO_ID as CITYSCAPES_TRAINID_TO_ID
from detco_bench.datasets import COCO_PERSON_FLIP_MAP as COCO_PERSON_FLIP_MAP
from detco_bench.datasets import COCO_PERSON_KEYPOINTS as COCO_PERSON_KEYPOINTS
from detco_bench.datasets import COCO_PERSON_OKS_SIGMAS as COCO_PERSON_OKS_SIGMAS
from detco_bench.datasets import DATA_ROOT_ENV as DATA_ROOT_ENV
from detco_bench.datasets import KINDS as KINDS
from detco_bench.datasets import SYNTHETIC_GENERATOR as SYNTHETIC_GENERATOR
from detco_bench.datasets import SYNTHETIC_MANIFEST as SYNTHETIC_MANIFEST
from detco_bench.datasets import VOC_CLASSES as VOC_CLASSES
from detco_bench.datasets import DatasetSpec as DatasetSpec
from detco_bench.datasets import builtin_dataset as builtin_dataset
from detco_bench.datasets import check_dataset as check_dataset
from detco_bench.datasets import cityscapes_files as cityscapes_files
from detco_bench.datasets import cityscapes_root as cityscapes_root
from detco_bench.datasets import coco_person_keypoint_meta as coco_person_keypoint_meta
from detco_bench.datasets import custom_coco_dataset as custom_coco_dataset
from detco_bench.datasets import data_root as data_root
from detco_bench.datasets import keypoint_flip_map as keypoint_flip_map
from detco_bench.datasets import load_cityscapes_instances as load_cityscapes_instances
from detco_bench.datasets import load_cityscapes_semantic as load_cityscapes_semantic
from detco_bench.datasets import prepare_cityscapes as prepare_cityscapes
from detco_bench.datasets import read_coco_categories as read_coco_categories
from detco_bench.datasets import synthetic_manifest as synthetic_manifest
