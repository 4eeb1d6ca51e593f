"""The effective config as the torchvision engine reads it.

A task's YAML chain (``transfer_configs/``) writes out the keys both engines share; for every other
key the engine reads, Detectron2's own default applies (`DETECTRON2_DEFAULTS`, copied from
detectron2/config/defaults.py), exactly as it would in a Detectron2 run of the same config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detco_bench.transfer_config import get_key

#: Detectron2's defaults (detectron2/config/defaults.py) for the keys this engine reads that a
#: task's config may leave out.
DETECTRON2_DEFAULTS: dict[str, Any] = {
    "MODEL.MASK_ON": False,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.FPN.NORM": "",
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7],
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.POSITIVE_FRACTION": 0.5,
    "MODEL.RPN.SMOOTH_L1_BETA": 0.0,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 12000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.5],
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.0,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": [512] * 8,
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": 17,
    "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE": 1,
    "MODEL.RETINANET.NUM_CLASSES": 80,
    "MODEL.RETINANET.NUM_CONVS": 4,
    "MODEL.RETINANET.IOU_THRESHOLDS": [0.4, 0.5],
    "MODEL.RETINANET.PRIOR_PROB": 0.01,
    "MODEL.RETINANET.SCORE_THRESH_TEST": 0.05,
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST": 1000,
    "MODEL.RETINANET.NMS_THRESH_TEST": 0.5,
    "MODEL.RETINANET.FOCAL_LOSS_GAMMA": 2.0,
    "MODEL.RETINANET.FOCAL_LOSS_ALPHA": 0.25,
    "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA": 0.1,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 54,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 128,
    "MODEL.SEM_SEG_HEAD.NUM_CONVS": 2,
    "MODEL.SEM_SEG_HEAD.DILATION": 6,
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 4,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 1.0,
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TRAIN": [800],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.CROP.ENABLED": False,
    "INPUT.CROP.TYPE": "relative_range",
    "INPUT.CROP.SIZE": [0.9, 0.9],
    "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.ASPECT_RATIO_GROUPING": True,
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.NESTEROV": False,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.WEIGHT_DECAY_BIAS": None,
    "SOLVER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.GAMMA": 0.1,
    "SOLVER.STEPS": [30000],
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.CHECKPOINT_PERIOD": 5000,
    "SOLVER.AMP.ENABLED": False,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "TEST.DETECTIONS_PER_IMAGE": 100,
    "TEST.KEYPOINT_OKS_SIGMAS": [],
    "TEST.PRECISE_BN.ENABLED": False,
    "TEST.PRECISE_BN.NUM_ITER": 200,
    "SEED": -1,
}


class Settings:
    """Read access to an effective config: ``s["SOLVER.BASE_LR"]`` (the config's value, else
    Detectron2's default; KeyError for a key neither knows)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def __getitem__(self, key: str) -> Any:
        missing = object()
        value = get_key(self.config, key, missing)
        if value is missing:
            if key not in DETECTRON2_DEFAULTS:
                raise KeyError(key)
            return DETECTRON2_DEFAULTS[key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def int(self, key: str) -> int:
        return int(self[key])

    def float(self, key: str) -> float:
        return float(self[key])

    def list(self, key: str) -> list[Any]:
        value = self[key]
        return list(value) if isinstance(value, (list, tuple)) else [value]
