"""Temporary shim: the synthetic layout writers now live in `detco_bench.synthetic`; import from
there. Re-exports only (``name as name``); to be deleted once importers are switched.

(The manifest's ``"generator": "detco_bench.synthetic_layouts"`` is a format tag, unrelated to
this module; see `detco_bench.datasets.synthetic`.)
"""

from detco_bench.synthetic import CITYSCAPES_CITIES as CITYSCAPES_CITIES
from detco_bench.synthetic import CITYSCAPES_CLASS_LABELS as CITYSCAPES_CLASS_LABELS
from detco_bench.synthetic import CITYSCAPES_ROAD as CITYSCAPES_ROAD
from detco_bench.synthetic import CITYSCAPES_SKY as CITYSCAPES_SKY
from detco_bench.synthetic import CLASS_NAMES as CLASS_NAMES
from detco_bench.synthetic import CLASSIFICATION_STREAM as CLASSIFICATION_STREAM
from detco_bench.synthetic import COCO_CATEGORIES as COCO_CATEGORIES
from detco_bench.synthetic import COCO_KEYPOINT_CATEGORY as COCO_KEYPOINT_CATEGORY
from detco_bench.synthetic import COCO_VAL_ID_OFFSET as COCO_VAL_ID_OFFSET
from detco_bench.synthetic import DEFAULT_IMAGE_SIZE as DEFAULT_IMAGE_SIZE
from detco_bench.synthetic import KEYPOINT_FLIP_MAP as KEYPOINT_FLIP_MAP
from detco_bench.synthetic import KEYPOINT_NAMES as KEYPOINT_NAMES
from detco_bench.synthetic import KEYPOINT_OKS_SIGMAS as KEYPOINT_OKS_SIGMAS
from detco_bench.synthetic import KEYPOINT_SKELETON as KEYPOINT_SKELETON
from detco_bench.synthetic import LAYOUT_FOLDERS as LAYOUT_FOLDERS
from detco_bench.synthetic import LAYOUTS as LAYOUTS
from detco_bench.synthetic import MANIFEST_NAME as MANIFEST_NAME
from detco_bench.synthetic import MAX_IMAGES_PER_SPLIT as MAX_IMAGES_PER_SPLIT
from detco_bench.synthetic import MAX_SIDE as MAX_SIDE
from detco_bench.synthetic import MIN_SIDE as MIN_SIDE
from detco_bench.synthetic import PROGRESS_MIN_IMAGES as PROGRESS_MIN_IMAGES
from detco_bench.synthetic import VAL_INDEX_OFFSET as VAL_INDEX_OFFSET
from detco_bench.synthetic import VOC_YEARS as VOC_YEARS
from detco_bench.synthetic import WRITERS as WRITERS
from detco_bench.synthetic import cityscapes_annotation as cityscapes_annotation
from detco_bench.synthetic import describe as describe
from detco_bench.synthetic import mask_to_cityscapes_polygon as mask_to_cityscapes_polygon
from detco_bench.synthetic import mask_to_polygons as mask_to_polygons
from detco_bench.synthetic import parse_image_size as parse_image_size
from detco_bench.synthetic import render_classification_image as render_classification_image
from detco_bench.synthetic import scene_index as scene_index
from detco_bench.synthetic import voc_split_plan as voc_split_plan
from detco_bench.synthetic import write_cityscapes as write_cityscapes
from detco_bench.synthetic import write_coco as write_coco
from detco_bench.synthetic import write_imagefolder as write_imagefolder
from detco_bench.synthetic import write_images as write_images
from detco_bench.synthetic import write_synthetic_dataset as write_synthetic_dataset
from detco_bench.synthetic import write_voc as write_voc
