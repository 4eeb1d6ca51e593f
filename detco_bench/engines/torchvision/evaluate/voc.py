"""Pascal VOC scoring: Detectron2's pascal_voc_evaluation, without the text files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from detco_bench.datasets import DatasetSpec
from detco_bench.engines.torchvision.data.voc import parse_voc_xml, voc_stems


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """VOC AP from recall / precision arrays: the 11-point VOC07 metric or the area under the
    monotone precision envelope (VOC2010+)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else float(np.max(prec[rec >= t]))
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_eval(
    detections: list[tuple[str, float, float, float, float, float]],
    ground_truth: dict[str, list[dict[str, Any]]],
    classname: str,
    ovthresh: float = 0.5,
    use_07_metric: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Detectron2's voc_eval for one class.

    detections: (image_id, score, xmin, ymin, xmax, ymax) in VOC's 1-based inclusive pixels.
    ground_truth: image_id -> objects {"name", "difficult", "bbox" (1-based inclusive)} of every
    test image. Returns (recall, precision, AP).
    """
    class_recs: dict[str, dict[str, Any]] = {}
    npos = 0
    for image_id, objects in ground_truth.items():
        objs = [o for o in objects if o["name"] == classname]
        bbox = np.array([o["bbox"] for o in objs], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([bool(o["difficult"]) for o in objs], dtype=bool)
        npos += int(np.sum(~difficult))
        class_recs[image_id] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(objs)}
    image_ids = [d[0] for d in detections]
    confidence = np.array([d[1] for d in detections], dtype=np.float64)
    bb_all = np.array([d[2:] for d in detections], dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-confidence)
    bb_all = bb_all[order, :]
    image_ids = [image_ids[i] for i in order]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        r = class_recs[image_ids[d]]
        bb = bb_all[d, :]
        ovmax = -np.inf
        gt = r["bbox"]
        jmax = -1
        if gt.size > 0:
            ixmin = np.maximum(gt[:, 0], bb[0])
            iymin = np.maximum(gt[:, 1], bb[1])
            ixmax = np.minimum(gt[:, 2], bb[2])
            iymax = np.minimum(gt[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = float(np.max(overlaps))
            jmax = int(np.argmax(overlaps))
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, voc_ap(rec, prec, use_07_metric)


def voc_detections(record: dict[str, Any], output: dict[str, Tensor], label_offset: int) -> list[tuple]:
    """(class, image_id, score, xmin + 1, ymin + 1, xmax, ymax), rounded as Detectron2's files are."""
    boxes = output["boxes"].float().numpy()
    scores = output["scores"].float().numpy()
    labels = output["labels"].numpy() - label_offset
    out = []
    for b, s, c in zip(boxes, scores, labels, strict=True):
        xmin, ymin, xmax, ymax = float(b[0]) + 1.0, float(b[1]) + 1.0, float(b[2]), float(b[3])
        out.append(
            (
                int(c),
                str(record["image_id"]),
                float(f"{s:.3f}"),
                float(f"{xmin:.1f}"),
                float(f"{ymin:.1f}"),
                float(f"{xmax:.1f}"),
                float(f"{ymax:.1f}"),
            )
        )
    return out


def voc_ground_truth(spec: DatasetSpec) -> dict[str, list[dict[str, Any]]]:
    """Image id -> the VOC objects of every image of the spec's split (`voc_eval`'s ground truth)."""
    voc = Path(spec.voc_dir or "")
    return {stem: parse_voc_xml(voc / "Annotations" / f"{stem}.xml")["objects"] for stem in voc_stems(spec)}


def voc_evaluate(
    detections: list[tuple], ground_truth: dict[str, list[dict[str, Any]]], classes: list[str], is_2007: bool
) -> dict[str, float]:
    """{"bbox/AP", "bbox/AP50", "bbox/AP75"}: Detectron2's PascalVOCDetectionEvaluator numbers."""
    per_class: dict[int, list[tuple]] = {}
    for det in detections:
        per_class.setdefault(det[0], []).append(det[1:])
    aps: dict[int, list[float]] = {t: [] for t in range(50, 100, 5)}
    for cls_id, name in enumerate(classes):
        dets = per_class.get(cls_id, [])
        for thresh in range(50, 100, 5):
            _, _, ap = voc_eval(dets, ground_truth, name, ovthresh=thresh / 100.0, use_07_metric=is_2007)
            aps[thresh].append(ap * 100)
    m_ap = {iou: float(np.mean(x)) for iou, x in aps.items()}
    return {"bbox/AP": float(np.mean(list(m_ap.values()))), "bbox/AP50": m_ap[50], "bbox/AP75": m_ap[75]}
