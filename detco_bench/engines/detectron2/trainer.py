"""The Detectron2 engine's trainer: DefaultTrainer (PreciseBN, periodic checkpoints, resume, test
at the end) with our evaluators and the semantic-segmentation data pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluator

from detco_bench.engines.detectron2.evaluators import build_evaluator


def semantic_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """Rescale first, then crop, then flip (detectron2's default mapper would crop first)."""
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    return augs


class Trainer(DefaultTrainer):
    """DefaultTrainer with the evaluator of each test dataset's kind and, for SemanticSegmentor,
    `semantic_augmentations`."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        return build_evaluator(cfg, dataset_name)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable[list[dict[str, Any]]]:
        if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
            return build_detection_train_loader(cfg)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=semantic_augmentations(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)
