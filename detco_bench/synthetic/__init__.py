"""Write the synthetic scenes of `pretrain.synthetic` as real dataset layouts.

Every layout is produced from the same deterministic generator, so a dataset is a pure function of
(layout, num_train, num_val, seed, image_size) and is byte-identical wherever it is regenerated.
The layouts, all written below one output root (a `DETECTRON2_DATASETS`-style folder), one module
each:

- `images`       ``images/{train,val}/*.png``: unlabeled pretraining images.
- `imagefolder`  ``imagenet/{train,val}/<class>/*.png``: torchvision ImageFolder / ImageNet style
  classification data; every image shows one large object of its class over small clutter.
- `coco`         ``coco/{train2017,val2017}/*.jpg`` and ``coco/annotations/`` with
  ``instances_{train,val}2017.json`` (4 categories, polygon masks) and
  ``person_keypoints_{train,val}2017.json`` (every object as a 4-keypoint "person").
- `voc`          ``VOC2007/`` and ``VOC2012/`` (Annotations, ImageSets/Main, JPEGImages).
- `cityscapes`   ``cityscapes/leftImg8bit`` and ``cityscapes/gtFine`` (labelIds, instanceIds,
  color, polygons json) following cityscapesScripts' conventions.

Shared by them: `common` (scene numbering, file writing, progress, summaries) and `polygons`
(COCO / cityscapesScripts polygons from masks). `writer` is the entry point
(`write_synthetic_dataset`) and records the manifest.

Scene ``i`` of the training pool is ``render_scene(seed, i)`` and scene ``j`` of the evaluation pool
is ``render_scene(seed, VAL_INDEX_OFFSET + j)`` in every layout, so the same image appears as
``coco/train2017`` image ``i``, Cityscapes train frame ``i`` and so on. See docs/synthetic_data.md.
"""

from detco_bench.synthetic.cityscapes import (
    CITYSCAPES_CITIES,
    CITYSCAPES_CLASS_LABELS,
    CITYSCAPES_ROAD,
    CITYSCAPES_SKY,
    cityscapes_annotation,
    write_cityscapes,
)
from detco_bench.synthetic.coco import (
    COCO_CATEGORIES,
    COCO_KEYPOINT_CATEGORY,
    COCO_VAL_ID_OFFSET,
    KEYPOINT_FLIP_MAP,
    KEYPOINT_OKS_SIGMAS,
    KEYPOINT_SKELETON,
    write_coco,
)
from detco_bench.synthetic.common import DEFAULT_IMAGE_SIZE, PROGRESS_MIN_IMAGES, VAL_INDEX_OFFSET, scene_index
from detco_bench.synthetic.imagefolder import CLASSIFICATION_STREAM, render_classification_image, write_imagefolder
from detco_bench.synthetic.images import write_images
from detco_bench.synthetic.polygons import mask_to_cityscapes_polygon, mask_to_polygons
from detco_bench.synthetic.voc import VOC_YEARS, voc_split_plan, write_voc
from detco_bench.synthetic.writer import (
    LAYOUT_FOLDERS,
    LAYOUTS,
    MANIFEST_NAME,
    MAX_IMAGES_PER_SPLIT,
    MAX_SIDE,
    MIN_SIDE,
    WRITERS,
    describe,
    parse_image_size,
    write_synthetic_dataset,
)
from pretrain.synthetic import CLASS_NAMES, KEYPOINT_NAMES

__all__ = [
    "CITYSCAPES_CITIES",
    "CITYSCAPES_CLASS_LABELS",
    "CITYSCAPES_ROAD",
    "CITYSCAPES_SKY",
    "CLASSIFICATION_STREAM",
    "CLASS_NAMES",
    "COCO_CATEGORIES",
    "COCO_KEYPOINT_CATEGORY",
    "COCO_VAL_ID_OFFSET",
    "DEFAULT_IMAGE_SIZE",
    "KEYPOINT_FLIP_MAP",
    "KEYPOINT_NAMES",
    "KEYPOINT_OKS_SIGMAS",
    "KEYPOINT_SKELETON",
    "LAYOUTS",
    "LAYOUT_FOLDERS",
    "MANIFEST_NAME",
    "MAX_IMAGES_PER_SPLIT",
    "MAX_SIDE",
    "MIN_SIDE",
    "PROGRESS_MIN_IMAGES",
    "VAL_INDEX_OFFSET",
    "VOC_YEARS",
    "WRITERS",
    "cityscapes_annotation",
    "describe",
    "mask_to_cityscapes_polygon",
    "mask_to_polygons",
    "parse_image_size",
    "render_classification_image",
    "scene_index",
    "voc_split_plan",
    "write_cityscapes",
    "write_coco",
    "write_imagefolder",
    "write_images",
    "write_synthetic_dataset",
    "write_voc",
]
