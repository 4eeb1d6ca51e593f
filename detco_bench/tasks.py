"""The transfer task registry: every benchmark of the DetCo paper as a named task.

A task knows its config file (under ``detco_bench/transfer_configs/``), its datasets, its schedule, the metric
keys it reports, the reference table of the paper it is compared with, and which evaluator scores
it. Both transfer engines (Detectron2 and the torchvision engine) read the same registry, see
docs/transfer.md. `REFERENCE_TASKS` names the paper's other benchmarks, those with reference
numbers that no transfer engine runs (the report lays out its tables from both).

Semi-supervised COCO settings are a task plus a subset: ``coco_fpn_12k`` with ``--subset 1%``
trains on a deterministic 1% sample of the COCO train images (`subset_image_ids`) and is
recorded as ``coco_fpn_12k@1%`` (the name the reference numbers use).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detco_bench.errors import UserError
from detco_bench.task_label import TaskLabel
from pretrain.atomic import atomic_write_text

FAMILIES: tuple[str, ...] = (
    "c4",
    "fpn",
    "retinanet",
    "keypoint",
    "voc_c4",
    "cityscapes_inst",
    "cityscapes_sem",
)
EVALUATORS: tuple[str, ...] = ("coco", "voc", "cityscapes_instance", "cityscapes_sem_seg")

BOX = ("bbox/AP", "bbox/AP50", "bbox/AP75")
MASK = ("segm/AP", "segm/AP50", "segm/AP75")
KEYPOINTS = ("keypoints/AP", "keypoints/AP50", "keypoints/AP75")

#: Families whose training data are COCO-format json files (subsets and custom datasets apply).
COCO_FORMAT_FAMILIES: tuple[str, ...] = ("c4", "fpn", "retinanet", "keypoint")

SUBSETS: tuple[str, ...] = ("1%", "2%", "5%", "10%")


@dataclass(frozen=True)
class Task:
    """One benchmark of the paper, runnable by `detco-bench transfer --task NAME`.

    name: registry name (also the ``task`` field of result records and reference files).
    family: model family, one of `FAMILIES` (engines dispatch on it).
    config: YAML file under ``detco_bench/transfer_configs/`` whose `_BASE_` chain gives the effective config.
    train / test: the dataset names in the config's DATASETS.TRAIN / DATASETS.TEST.
    metrics: the metric keys compared with the paper (COCO-style names); engines may record more.
    reference: the table of shared/reference/detco_paper_tables.md (and the ``source`` column of
        detco_bench/references/paper.csv) that holds the published numbers.
    evaluator: how the test set is scored, one of `EVALUATORS`.
    schedule: human-readable schedule ("12k", "1x (90k)", ...); max_iter / batch / lr: the
        published solver values at the reference world size of 8 GPUs.
    """

    name: str
    family: str
    config: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    metrics: tuple[str, ...]
    reference: str
    evaluator: str
    schedule: str
    max_iter: int
    ims_per_batch: int
    base_lr: float
    description: str

    @property
    def supports_subset(self) -> bool:
        return self.family in COCO_FORMAT_FAMILIES

    @property
    def supports_custom_data(self) -> bool:
        return self.family in COCO_FORMAT_FAMILIES

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "config": self.config,
            "train": list(self.train),
            "test": list(self.test),
            "metrics": list(self.metrics),
            "reference": self.reference,
            "evaluator": self.evaluator,
            "schedule": self.schedule,
            "max_iter": self.max_iter,
            "ims_per_batch": self.ims_per_batch,
            "base_lr": self.base_lr,
            "description": self.description,
        }


def _coco(
    name: str,
    family: str,
    config: str,
    schedule: str,
    max_iter: int,
    lr: float,
    metrics: tuple[str, ...],
    reference: str,
    description: str,
    train: str = "coco_2017_train",
    test: str = "coco_2017_val",
) -> Task:
    return Task(
        name=name,
        family=family,
        config=config,
        train=(train,),
        test=(test,),
        metrics=metrics,
        reference=reference,
        evaluator="coco",
        schedule=schedule,
        max_iter=max_iter,
        ims_per_batch=16,
        base_lr=lr,
        description=description,
    )


_C4 = "COCO Mask R-CNN R50-C4"
_FPN = "COCO Mask R-CNN R50-FPN"
_RETINA = "COCO RetinaNet R50-FPN"

_TASKS: tuple[Task, ...] = (
    _coco(
        "coco_c4_12k",
        "c4",
        "coco_R_50_C4_12k_moco.yaml",
        "12k",
        12_000,
        0.02,
        BOX + MASK,
        _C4,
        "Mask R-CNN R50-C4 on COCO, 12k iterations",
    ),
    _coco(
        "coco_c4_1x",
        "c4",
        "coco_R_50_C4_1x_moco.yaml",
        "1x (90k)",
        90_000,
        0.02,
        BOX + MASK,
        _C4,
        "Mask R-CNN R50-C4 on COCO, 1x schedule",
    ),
    _coco(
        "coco_c4_2x",
        "c4",
        "coco_R_50_C4_2x_moco.yaml",
        "2x (180k)",
        180_000,
        0.02,
        BOX + MASK,
        _C4,
        "Mask R-CNN R50-C4 on COCO, 2x schedule",
    ),
    _coco(
        "coco_fpn_12k",
        "fpn",
        "coco_R_50_FPN_12k_moco.yaml",
        "12k",
        12_000,
        0.02,
        BOX + MASK,
        _FPN,
        "Mask R-CNN R50-FPN on COCO, 12k iterations (also the semi-supervised --subset setting)",
    ),
    _coco(
        "coco_fpn_1x",
        "fpn",
        "coco_R_50_FPN_1x_moco.yaml",
        "1x (90k)",
        90_000,
        0.02,
        BOX + MASK,
        _FPN,
        "Mask R-CNN R50-FPN on COCO, 1x schedule",
    ),
    _coco(
        "coco_fpn_2x",
        "fpn",
        "coco_R_50_FPN_2x_moco.yaml",
        "2x (180k)",
        180_000,
        0.02,
        BOX + MASK,
        _FPN,
        "Mask R-CNN R50-FPN on COCO, 2x schedule",
    ),
    _coco(
        "retinanet_12k",
        "retinanet",
        "coco_R_50_RetinaNet_12k_moco.yaml",
        "12k",
        12_000,
        0.01,
        BOX,
        _RETINA,
        "RetinaNet R50-FPN on COCO, 12k iterations (also the semi-supervised --subset setting)",
    ),
    _coco(
        "retinanet_1x",
        "retinanet",
        "coco_R_50_RetinaNet_1x_moco.yaml",
        "1x (90k)",
        90_000,
        0.01,
        BOX,
        _RETINA,
        "RetinaNet R50-FPN on COCO, 1x schedule",
    ),
    _coco(
        "retinanet_2x",
        "retinanet",
        "coco_R_50_RetinaNet_2x_moco.yaml",
        "2x (180k)",
        180_000,
        0.01,
        BOX,
        _RETINA,
        "RetinaNet R50-FPN on COCO, 2x schedule",
    ),
    _coco(
        "keypoint_fpn_2x",
        "keypoint",
        "keypoint_rcnn_R_50_FPN_2x_moco.yaml",
        "2x (180k)",
        180_000,
        0.02,
        KEYPOINTS,
        "COCO Keypoint R-CNN R50-FPN 2x",
        "Keypoint R-CNN R50-FPN on COCO person keypoints, 2x",
        train="keypoints_coco_2017_train",
        test="keypoints_coco_2017_val",
    ),
    Task(
        name="voc_c4_24k",
        family="voc_c4",
        config="pascal_voc_R_50_C4_24k_moco.yaml",
        train=("voc_2007_trainval", "voc_2012_trainval"),
        test=("voc_2007_test",),
        metrics=BOX,
        reference="PASCAL VOC07+12 Faster R-CNN R50-C4",
        evaluator="voc",
        schedule="24k",
        max_iter=24_000,
        ims_per_batch=16,
        base_lr=0.02,
        description="Faster R-CNN R50-C4 on VOC07+12 trainval, tested on VOC07 test (mean of 5 trials)",
    ),
    Task(
        name="cityscapes_inst_fpn",
        family="cityscapes_inst",
        config="cityscapes_mask_rcnn_R_50_FPN_moco.yaml",
        train=("cityscapes_fine_instance_seg_train",),
        test=("cityscapes_fine_instance_seg_val",),
        metrics=("segm/AP", "segm/AP50"),
        reference="Cityscapes instance segmentation",
        evaluator="cityscapes_instance",
        schedule="24k",
        max_iter=24_000,
        ims_per_batch=8,
        base_lr=0.01,
        description="Mask R-CNN R50-FPN on Cityscapes fine (8 instance classes), cityscapesScripts AP",
    ),
    Task(
        name="cityscapes_sem",
        family="cityscapes_sem",
        config="cityscapes_fcn16s_R_50_moco.yaml",
        train=("cityscapes_fine_sem_seg_train",),
        test=("cityscapes_fine_sem_seg_val",),
        metrics=("sem_seg/mIoU",),
        reference="Cityscapes semantic segmentation",
        evaluator="cityscapes_sem_seg",
        schedule="90k",
        max_iter=90_000,
        ims_per_batch=16,
        base_lr=0.01,
        description="FCN-16s-style semantic segmentation (dilated R50) on Cityscapes fine, 19 classes",
    ),
)

TASKS: dict[str, Task] = {t.name: t for t in _TASKS}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


@dataclass(frozen=True)
class ReferenceTask:
    """A benchmark of the paper with reference numbers that no transfer engine runs.

    name / metrics / reference / description mean what they mean for `Task`; these tasks are not
    in `TASKS`, so `detco-bench transfer --task` never offers them.
    """

    name: str
    metrics: tuple[str, ...]
    reference: str
    description: str


_REFERENCE_TASKS: tuple[ReferenceTask, ...] = (
    ReferenceTask(
        "linear_protocol",
        ("top1", "top5"),
        "ImageNet-1k linear classification",
        "linear probe of the frozen backbone on ImageNet-1k (`detco-bench linear --mode protocol`)",
    ),
    ReferenceTask(
        "voc07_svm",
        ("mAP",),
        "VOC07 SVM",
        "linear SVMs on frozen features, VOC07 classification (reference numbers only)",
    ),
    ReferenceTask(
        "densepose_fpn",
        ("densepose/AP", "densepose/AP50", "densepose/AP75"),
        "COCO DensePose",
        "DensePose R-CNN R50-FPN on COCO (reference numbers only)",
    ),
)
REFERENCE_TASKS: dict[str, ReferenceTask] = {t.name: t for t in _REFERENCE_TASKS}


def find_benchmark(name: str) -> Task | ReferenceTask | None:
    """The registry task or reference-only task called `name` (a bare name, no label parts)."""
    return TASKS.get(name) or REFERENCE_TASKS.get(name)


def get_task(name: str) -> Task:
    """The task called `name`; `UserError` naming every task otherwise."""
    task = TASKS.get(name)
    if task is None:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return task


def parse_subset(subset: str | None) -> float | None:
    """'1%' -> 0.01 (also accepts '1'); None -> None. Only the paper's settings are allowed."""
    if subset is None or subset == "":
        return None
    text = str(subset).strip()
    if not text.endswith("%"):
        text += "%"
    if text not in SUBSETS:
        raise UserError(f"unknown --subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    return float(text[:-1]) / 100.0


def normalize_subset(subset: str | None) -> str | None:
    """The canonical spelling ('1%') of a subset option, or None."""
    fraction = parse_subset(subset)
    if fraction is None:
        return None
    pct = fraction * 100
    return f"{int(pct) if pct == int(pct) else pct}%"


def task_label(task: Task | str, subset: str | None = None) -> str:
    """The record/reference name of a run: ``coco_fpn_12k`` or ``coco_fpn_12k@1%``."""
    name = task.name if isinstance(task, Task) else task
    return str(TaskLabel(name, normalize_subset(subset)))


def check_subset(task: Task, subset: str | None) -> str | None:
    """Validate a subset for a task; returns the canonical spelling or None."""
    canonical = normalize_subset(subset)
    if canonical and not task.supports_subset:
        raise UserError(
            f"--subset applies to COCO tasks ({', '.join(t.name for t in _TASKS if t.supports_subset)}); "
            f"{task.name} trains on {', '.join(task.train)}"
        )
    return canonical


# --------------------------------------------------------------------------------------------
# Semi-supervised subsets


def _subset_key(seed: int, image_id: Any) -> str:
    return hashlib.sha256(f"detco-bench-subset:{seed}:{image_id}".encode()).hexdigest()


def subset_image_ids(image_ids: Sequence[Any], fraction: float, seed: int) -> list[Any]:
    """The image ids of a `fraction` subset, chosen deterministically by `seed`.

    Images are ranked by sha256("detco-bench-subset:<seed>:<id>") and the first
    ``max(1, round(fraction * N))`` are kept (returned in their original order). The choice
    depends only on (ids, fraction, seed), not on the Python / numpy version, and subsets of the
    same seed are nested: the 1% sample is contained in the 2%, 5% and 10% samples.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = list(image_ids)
    if not ids:
        return []
    k = max(1, int(round(fraction * len(ids))))
    chosen = set(sorted(ids, key=lambda i: _subset_key(seed, i))[:k])
    return [i for i in ids if i in chosen]


def write_subset_json(src: str | os.PathLike, dst: str | os.PathLike, fraction: float, seed: int) -> dict[str, Any]:
    """Write a COCO-format json with a `fraction` subset of the images of `src` (and only their
    annotations; categories and other top-level fields unchanged) to `dst`, atomically.

    Returns a summary (counts and the chosen image ids' sha256). Raises `UserError` for an
    unreadable source.
    """
    src, dst = Path(src), Path(dst)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {src}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {src}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{src}: not a COCO-format annotation file (no 'images' list)")
    ids = [img["id"] for img in data["images"]]
    keep = set(subset_image_ids(ids, fraction, seed))
    out = dict(data)
    out["images"] = [img for img in data["images"] if img["id"] in keep]
    out["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in keep]
    info = dict(data.get("info") or {})
    info["detco_bench_subset"] = {
        "source": str(src),
        "fraction": fraction,
        "seed": seed,
        "images": len(out["images"]),
        "of_images": len(ids),
        "rule": "first max(1, round(f*N)) images by sha256('detco-bench-subset:<seed>:<id>')",
    }
    out["info"] = info
    atomic_write_text(dst, json.dumps(out, separators=(",", ":")))
    digest = hashlib.sha256(",".join(str(i) for i in sorted(keep, key=str)).encode()).hexdigest()
    return {
        "path": str(dst),
        "images": len(out["images"]),
        "of_images": len(ids),
        "annotations": len(out["annotations"]),
        "image_ids_sha256": digest,
    }
