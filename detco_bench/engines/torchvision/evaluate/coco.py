"""COCO-format scoring: predictions -> COCO result dicts -> pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from detco_bench.engines.torchvision.data.coco import quiet_coco
from detco_bench.engines.torchvision.data.records import DatasetMeta

COCO_METRICS = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
}


def coco_results(record: dict[str, Any], output: dict[str, Tensor], meta: DatasetMeta, label_offset: int) -> list[dict]:
    """One image's predictions as COCO result dicts (Detectron2's instances_to_coco_json)."""
    boxes = output["boxes"].float().numpy()
    if len(boxes) == 0:
        return []
    scores = output["scores"].float().numpy()
    labels = output["labels"].numpy() - label_offset
    ids = meta.category_ids or list(range(1, len(meta.classes) + 1))
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    rles = None
    if "masks" in output:
        masks = (output["masks"][:, 0] >= 0.5).numpy().astype(np.uint8)
        rles = [mask_util.encode(np.asfortranarray(m[:, :, None]))[0] for m in masks]
        for rle in rles:
            rle["counts"] = rle["counts"].decode("utf-8")
    kps = None
    if "keypoints" in output:
        kps = output["keypoints"].float().clone()
        kps[..., :2] -= 0.5  # continuous coordinates -> COCO pixel indices
        if "keypoints_scores" in output:
            kps[..., 2] = output["keypoints_scores"].float()
        kps = kps.numpy()
    out = []
    for k in range(len(boxes)):
        r: dict[str, Any] = {
            "image_id": record["image_id"],
            "category_id": int(ids[int(labels[k])]),
            "bbox": [float(v) for v in xywh[k]],
            "score": float(scores[k]),
        }
        if rles is not None:
            r["segmentation"] = rles[k]
        if kps is not None:
            r["keypoints"] = [float(v) for v in kps[k].reshape(-1)]
        out.append(r)
    return out


def coco_evaluate(
    json_file: str,
    results: list[dict],
    iou_types: Iterable[str],
    classes: list[str],
    kpt_oks_sigmas: list[float] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """pycocotools COCOeval of `results` against `json_file`: {"bbox/AP": ..., ...} in percent,
    reported as Detectron2's COCOEvaluator reports them: every metric of an IoU type NaN when there
    are no predictions at all, a metric COCOeval cannot compute (-1: no GT of that size) NaN, and
    the per-class AP of a class without GT NaN."""
    gt = quiet_coco(json_file)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        names = COCO_METRICS[iou_type]
        if not results:
            if log:
                log(f"{iou_type}: no predictions; every metric NaN (as Detectron2's COCOEvaluator)")
            metrics.update({f"{iou_type}/{n}": math.nan for n in names})
            continue
        res = copy.deepcopy(results)
        if iou_type == "segm":
            for r in res:
                r.pop("bbox", None)  # mask AP uses mask areas for small/medium/large
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dt = gt.loadRes(res)
            ev = COCOeval(gt, dt, iou_type)
            if iou_type == "keypoints":
                if kpt_oks_sigmas:
                    ev.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas, dtype=np.float64)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        if log:
            log(f"COCOeval {iou_type}:\n{buf.getvalue().strip()}")
        for i, n in enumerate(names):
            value = float(ev.stats[i])
            metrics[f"{iou_type}/{n}"] = 100.0 * value if value >= 0 else math.nan
        if iou_type in ("bbox", "segm"):
            precisions = ev.eval["precision"]  # [iou, recall, class, area, maxdets]
            for k, name in enumerate(classes[: precisions.shape[2]]):
                p = precisions[:, :, k, 0, -1]
                p = p[p > -1]
                metrics[f"{iou_type}/AP-{name}"] = 100.0 * float(np.mean(p)) if p.size else math.nan
    return metrics
