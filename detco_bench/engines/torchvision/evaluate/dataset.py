"""Inference on one test set, sharded over the processes, scored on rank 0 by the dataset's scorer."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detco_bench.datasets import DatasetSpec
from detco_bench.engines.torchvision.data.records import DatasetMeta
from detco_bench.engines.torchvision.distributed import barrier, gather_to_main, rank_and_world
from detco_bench.engines.torchvision.evaluate.coco import coco_evaluate, coco_results
from detco_bench.engines.torchvision.evaluate.voc import voc_detections, voc_evaluate, voc_ground_truth
from detco_bench.evaluation import InstanceWriter, SemanticWriter
from pretrain.atomic import atomic_write_text


@torch.no_grad()
def evaluate_dataset(
    model: torch.nn.Module,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    spec: DatasetSpec,
    meta: DatasetMeta,
    *,
    device: torch.device,
    work_dir: Path,
    mask_on: bool,
    keypoint_on: bool,
    amp_dtype: torch.dtype | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run `model` on this rank's shard of a test set and score all shards on rank 0.
    Returns the metrics on rank 0 and {} elsewhere."""
    rank, _ = rank_and_world()
    label_offset = int(getattr(model, "label_offset", 1))
    model.eval()
    kind = spec.kind
    cs_dir = work_dir / "cityscapes"
    if kind.startswith("cityscapes"):
        if rank == 0 and cs_dir.exists():
            shutil.rmtree(cs_dir)
        barrier()
    writer: Any = None
    if kind == "cityscapes_instance":
        writer = InstanceWriter(cs_dir)
    elif kind == "cityscapes_sem_seg":
        writer = SemanticWriter(cs_dir)
    local: list[Any] = []
    for images, records in loader:
        images = [im.to(device, non_blocking=True) for im in images]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images)
        for rec, out in zip(records, outputs, strict=True):
            if kind == "cityscapes_sem_seg":
                writer.add(rec["file_name"], out.argmax(dim=0).cpu().numpy().astype(np.uint8))
                continue
            out = {k: v.detach().cpu() for k, v in out.items()}
            if kind == "coco":
                local.extend(coco_results(rec, out, meta, label_offset))
            elif kind == "voc":
                local.extend(voc_detections(rec, out, label_offset))
            elif kind == "cityscapes_instance":
                masks = (out["masks"][:, 0] >= 0.5).numpy() if "masks" in out else np.zeros((0, 1, 1), bool)
                writer.add(rec["file_name"], masks, out["labels"].numpy() - label_offset, out["scores"].float().numpy())
            else:
                raise ValueError(f"no evaluator for dataset kind {kind!r}")
        if progress is not None:
            progress(len(records))
    barrier()
    gathered = gather_to_main(local)
    if rank != 0:
        return {}
    assert gathered is not None
    everything = [x for part in gathered for x in part]
    if kind == "coco":
        atomic_write_text(work_dir / "coco_instances_results.json", json.dumps(everything))
        iou_types = ["bbox"] + (["segm"] if mask_on else []) + (["keypoints"] if keypoint_on else [])
        return coco_evaluate(
            str(spec.json_file), everything, iou_types, meta.classes, meta.keypoint_oks_sigmas or None, log=log
        )
    if kind == "voc":
        return voc_evaluate(everything, voc_ground_truth(spec), meta.classes, is_2007=str(spec.year) == "2007")
    if kind == "cityscapes_instance":
        return {f"segm/{k}": v for k, v in writer.evaluate(spec.gt_dir).items()}
    return {f"sem_seg/{k}": v for k, v in writer.evaluate(spec.gt_dir).items()}


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that are finite numbers, as floats (a record only holds numbers)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
