"""The Detectron2 engine's trainer: DefaultTrainer (PreciseBN, periodic checkpoints, resume, test
at the end) with our evaluators and the semantic-segmentation data pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer, HookBase, hooks
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
    """DefaultTrainer with the evaluator of each test dataset's kind, for SemanticSegmentor
    `semantic_augmentations`, and ``--keep-checkpoints``: `keep_checkpoints` periodic checkpoints
    kept (the newest; 0: all), model_final.pth always."""

    def __init__(self, cfg: CfgNode, keep_checkpoints: int = 0) -> None:
        self.keep_checkpoints = keep_checkpoints  # read by build_hooks, which DefaultTrainer.__init__ calls
        super().__init__(cfg)

    def build_hooks(self) -> list[HookBase | None]:
        built = super().build_hooks()
        for hook in built:
            if isinstance(hook, hooks.PeriodicCheckpointer) and self.keep_checkpoints:
                hook.max_to_keep = self.keep_checkpoints
                # The files an interrupted run left count too (fvcore only tracks its own saves);
                # the names are zero-padded (model_0004999.pth), so sorting them sorts by iteration.
                found = Path(self.cfg.OUTPUT_DIR).glob(f"{hook.file_prefix}_[0-9]*.pth")
                hook.recent_checkpoints = sorted(str(p) for p in found)
        return built

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        return build_evaluator(cfg, dataset_name)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable[list[dict[str, Any]]]:
        if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
            return build_detection_train_loader(cfg)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=semantic_augmentations(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)
