"""The Detectron2 engine's evaluators: Cityscapes through cityscapesScripts
(`detco_bench.evaluation`), the others from detectron2, chosen by the dataset's
``evaluator_type``; and detectron2's nested results -> the record's flat metrics."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from detco_bench.evaluation import InstanceWriter, SemanticWriter


class _CityscapesEvaluator(DatasetEvaluator):
    """Writes the predictions of every process as cityscapesScripts files into one folder
    (``<output_dir>/cityscapes``; one machine, or a shared file system), scored on the main process."""

    writer_cls: type = SemanticWriter

    def __init__(self, dataset_name: str, output_dir: str) -> None:
        self._meta = MetadataCatalog.get(dataset_name)
        self._work = Path(output_dir) / "cityscapes"

    def reset(self) -> None:
        if comm.is_main_process() and self._work.exists():
            shutil.rmtree(self._work)
        comm.synchronize()
        self._writer = self.writer_cls(self._work)


class CityscapesInstanceEvaluator(_CityscapesEvaluator):
    """Cityscapes instance segmentation: ``{"segm": {"AP": ..., "AP50": ...}}``."""

    writer_cls = InstanceWriter

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            inst = out["instances"].to("cpu")
            masks = inst.pred_masks.numpy() if inst.has("pred_masks") else np.zeros((0, 1, 1), bool)
            self._writer.add(inp["file_name"], masks, inst.pred_classes.numpy(), inst.scores.numpy())

    def evaluate(self) -> dict[str, Any]:
        comm.synchronize()
        if not comm.is_main_process():
            return {}
        return {"segm": self._writer.evaluate(self._meta.gt_dir)}


class CityscapesSemSegEvaluator(_CityscapesEvaluator):
    """Cityscapes semantic segmentation: ``{"sem_seg": {"mIoU": ..., ...}}``."""

    writer_cls = SemanticWriter

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            pred = out["sem_seg"].argmax(dim=0).to("cpu").numpy()  # [NUM_CLASSES, H, W] logits -> train ids
            self._writer.add(inp["file_name"], pred)

    def evaluate(self) -> dict[str, Any]:
        comm.synchronize()
        if not comm.is_main_process():
            return {}
        return {"sem_seg": self._writer.evaluate(self._meta.gt_dir)}


def build_evaluator(cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
    """The evaluator of a registered dataset, by its ``evaluator_type`` (`datasets`)."""
    out = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    kind = MetadataCatalog.get(dataset_name).evaluator_type
    if kind == "coco":
        return COCOEvaluator(
            dataset_name,
            tasks=None,
            distributed=True,
            output_dir=out,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            use_fast_impl=False,
            kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
            allow_cached_coco=False,
        )
    if kind == "voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name, out)
    if kind == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name, out)
    raise ValueError(f"no evaluator for dataset kind {kind!r}")


def flatten_results(results: Any) -> dict[str, float]:
    """{"bbox": {"AP": 1.0}} -> {"bbox/AP": 1.0}; nested per-dataset dicts are flattened too.
    Values detectron2 reports as NaN (e.g. APl without large objects: "cannot be computed") are
    left out, so a record only holds numbers."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, np.floating, np.integer)) and not isinstance(node, bool):
            value = float(node)
            if math.isfinite(value):
                flat[prefix] = value

    walk("", results)
    return flat
