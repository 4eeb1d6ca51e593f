"""Inference and scoring with the official tools, for the torchvision engine.

* COCO-format data: predictions as COCO result dicts (boxes XYWH, masks RLE-encoded at >= 0.5,
  keypoints - 0.5 back to COCO's pixel indices) scored by pycocotools' COCOeval for "bbox", "segm"
  (without the bbox field, so areas are mask areas, as Detectron2 does) and "keypoints" (OKS sigmas
  of the dataset). Metrics ``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``, ``bbox/APs|m|l``,
  ``bbox/AP-<class>`` ... in percent; undefined values (no ground truth of a size) are left out.
* VOC: Detectron2's PascalVOCDetectionEvaluator re-implemented (`voc_eval`, `voc_ap`): per class,
  detections with xmin/ymin + 1 (VOC's 1-based pixels), scores rounded to 3 and coordinates to 1
  decimal as its text files do, IoU with the +1 pixel convention, difficult objects ignored, the
  11-point VOC07 AP for VOC2007 test (area under the curve otherwise) at IoU 0.50:0.95;
  ``bbox/AP`` is the mean over the 10 thresholds, ``bbox/AP50`` / ``bbox/AP75`` single thresholds.
* Cityscapes: `detco_bench.cityscapes_eval` (cityscapesScripts' evalInstanceLevelSemanticLabeling,
  ``segm/AP``, ``segm/AP50``; evalPixelLevelSemanticLabeling, ``sem_seg/mIoU``...).

Each process runs inference on its shard of the test set; predictions are gathered on rank 0
(Cityscapes: written as files into one folder), which scores them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detco_bench.transfer_data import DatasetSpec
from detco_bench.tv_engine.data import DatasetMeta, parse_voc_xml, voc_stems

COCO_METRICS = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
}


# --------------------------------------------------------------------------------------------
# Distributed helpers


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_main(obj: Any) -> list[Any] | None:
    """[obj of every rank] on rank 0, None elsewhere."""
    import torch.distributed as dist

    rank, world = _world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if _world()[1] > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------
# COCO


def coco_results(record: dict[str, Any], output: dict[str, Tensor], meta: DatasetMeta, label_offset: int) -> list[dict]:
    """One image's predictions as COCO result dicts (Detectron2's instances_to_coco_json)."""
    import pycocotools.mask as mask_util

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
    """pycocotools COCOeval of `results` against `json_file`: {"bbox/AP": ..., ...} in percent."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        names = COCO_METRICS[iou_type]
        if not results:
            if log:
                log(f"{iou_type}: no predictions; AP = 0")
            metrics.update({f"{iou_type}/{n}": 0.0 for n in ("AP", "AP50", "AP75")})
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
            if value >= 0:
                metrics[f"{iou_type}/{n}"] = 100.0 * value
        if iou_type in ("bbox", "segm"):
            precisions = ev.eval["precision"]  # [iou, recall, class, area, maxdets]
            for k, name in enumerate(classes[: precisions.shape[2]]):
                p = precisions[:, :, k, 0, -1]
                p = p[p > -1]
                if p.size:
                    metrics[f"{iou_type}/AP-{name}"] = 100.0 * float(np.mean(p))
    return metrics


# --------------------------------------------------------------------------------------------
# VOC (Detectron2's pascal_voc_evaluation, without the text files)


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


# --------------------------------------------------------------------------------------------
# Inference + evaluation of one dataset


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
    from detco_bench.cityscapes_eval import InstanceWriter, SemanticWriter

    rank, _ = _world()
    label_offset = int(getattr(model, "label_offset", 1))
    model.eval()
    kind = spec.kind
    cs_dir = work_dir / "cityscapes"
    if kind.startswith("cityscapes"):
        if rank == 0 and cs_dir.exists():
            import shutil

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
        import json

        from pretrain.atomic import atomic_write_text

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
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
