"""The Detectron2 engine: our train-net equivalent for the MoCo / DetCo transfer protocol.

What MoCo's ``detection/train_net.py`` does, written for this harness (detectron2 is imported only
when a job runs):

* `Res5ROIHeadsExtraNorm`: detectron2's C4 res5 RoI head followed by one extra normalization
  layer (``cfg.MODEL.RESNETS.NORM``) after res5, as the MoCo paper describes.
* `FCNDilatedHead`: the FCN-16s-style semantic segmentation head of ``cityscapes_sem`` (two
  dilated 3x3 convs + norm + ReLU, a 1x1 classifier, x16 bilinear upsampling) on detectron2's
  SemanticSegmentor with a dilated R50 (docs/transfer.md).
* Datasets are registered from the plan's `DatasetSpec`s (COCO json, VOC via detectron2's
  pascal_voc loader, Cityscapes with our own loaders); evaluators by dataset kind: COCOEvaluator
  (official pycocotools), PascalVOCDetectionEvaluator, and Cityscapes instance / semantic through
  cityscapesScripts (`detco_bench.cityscapes_eval`; detectron2's own Cityscapes modules are not
  used).
* DefaultTrainer with PreciseBN, periodic checkpoints and resume from the output folder.
* Launch: one process (CPU or 1 GPU), ``detectron2.engine.launch`` for ``--gpus N`` and
  multi-machine jobs, or the torch.distributed environment submitit sets up in a Slurm task.

``run(plan)`` returns the path of the result record (written by global rank 0).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detco_bench.transfer import TransferPlan, finish_run

logger = logging.getLogger("detco_bench.detectron2")


# --------------------------------------------------------------------------------------------
# Model components


def register_components() -> None:
    """Register Res5ROIHeadsExtraNorm and FCNDilatedHead in detectron2's registries (idempotent)."""
    import fvcore.nn.weight_init as weight_init
    from detectron2.layers import Conv2d, get_norm
    from detectron2.modeling import ROI_HEADS_REGISTRY, SEM_SEG_HEADS_REGISTRY
    from detectron2.modeling.roi_heads import Res5ROIHeads
    from torch import nn
    from torch.nn import functional as F

    if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:

        class Res5ROIHeadsExtraNorm(Res5ROIHeads):
            """Res5ROIHeads with an extra norm layer after the res5 stage (MoCo, Sec. 4.2: the
            C4 head's res5 ends with BN, since the backbone's outputs are normalized by BN)."""

            @classmethod
            def _build_res5_block(cls, cfg: Any) -> tuple[nn.Sequential, int]:
                seq, out_channels = super()._build_res5_block(cfg)
                seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
                return seq, out_channels

        ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)

    if "FCNDilatedHead" not in SEM_SEG_HEADS_REGISTRY:

        class FCNDilatedHead(nn.Module):
            """FCN-16s-style head: NUM_CONVS x (3x3 conv, CONVS_DIM channels, dilation DILATION,
            norm, ReLU) on the single input feature, a 1x1 conv to NUM_CLASSES, logits upsampled by
            COMMON_STRIDE (bilinear) and cropped to the padded input; cross-entropy ignoring
            IGNORE_VALUE."""

            def __init__(self, cfg: Any, input_shape: dict[str, Any]) -> None:
                super().__init__()
                head = cfg.MODEL.SEM_SEG_HEAD
                if len(head.IN_FEATURES) != 1:
                    raise ValueError(f"FCNDilatedHead takes one feature map, got {head.IN_FEATURES}")
                self.in_feature = head.IN_FEATURES[0]
                self.common_stride = head.COMMON_STRIDE
                self.ignore_value = head.IGNORE_VALUE
                self.loss_weight = head.LOSS_WEIGHT
                channels = input_shape[self.in_feature].channels
                convs = []
                for i in range(head.NUM_CONVS):
                    conv = Conv2d(
                        channels if i == 0 else head.CONVS_DIM,
                        head.CONVS_DIM,
                        kernel_size=3,
                        padding=head.DILATION,
                        dilation=head.DILATION,
                        bias=not head.NORM,
                        norm=get_norm(head.NORM, head.CONVS_DIM),
                        activation=F.relu,
                    )
                    weight_init.c2_msra_fill(conv)
                    convs.append(conv)
                self.convs = nn.Sequential(*convs)
                self.predictor = Conv2d(head.CONVS_DIM if convs else channels, head.NUM_CLASSES, kernel_size=1)
                nn.init.normal_(self.predictor.weight, 0, 0.001)
                nn.init.constant_(self.predictor.bias, 0)

            def forward(
                self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None
            ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
                x = self.predictor(self.convs(features[self.in_feature]))
                x = F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
                if self.training:
                    assert targets is not None
                    x = x[..., : targets.shape[-2], : targets.shape[-1]]
                    loss = F.cross_entropy(x, targets, reduction="mean", ignore_index=self.ignore_value)
                    return None, {"loss_sem_seg": loss * self.loss_weight}
                return x, {}

        SEM_SEG_HEADS_REGISTRY.register(FCNDilatedHead)


# --------------------------------------------------------------------------------------------
# Config


def add_detco_config(cfg: Any) -> None:
    """detco-bench's own keys (`detco_bench.transfer_config.CUSTOM_KEYS`) with their defaults."""
    from detco_bench.transfer_config import CUSTOM_KEYS

    for key, value in CUSTOM_KEYS.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = getattr(node, part)
        if parts[-1] not in node:
            node[parts[-1]] = value


def build_cfg(plan: TransferPlan) -> Any:
    """detectron2's CfgNode: its defaults, our keys, then the plan's effective config merged in
    (detectron2 checks every key and type)."""
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    add_detco_config(cfg)
    cfg.merge_from_other_cfg(CfgNode(plan.config))
    cfg.freeze()
    return cfg


# --------------------------------------------------------------------------------------------
# Datasets


def _cityscapes_instance_dicts(image_dir: str, gt_dir: str) -> list[dict[str, Any]]:
    from detectron2.structures import BoxMode

    from detco_bench.transfer_data import load_cityscapes_instances

    dicts = load_cityscapes_instances(image_dir, gt_dir)
    for d in dicts:
        for a in d["annotations"]:
            a["bbox_mode"] = BoxMode.XYXY_ABS
    return dicts


def register_datasets(plan: TransferPlan) -> None:
    """(Re-)register every dataset of the plan under the names its config uses."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    from detco_bench.transfer_data import load_cityscapes_semantic

    for name, spec in plan.datasets.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        if spec.kind == "coco":
            register_coco_instances(name, {}, spec.json_file, spec.image_root)
            meta = MetadataCatalog.get(name)
            if spec.keypoints:
                names = spec.meta["keypoint_names"]
                meta.set(
                    keypoint_names=list(names),
                    keypoint_flip_map=[tuple(p) for p in spec.meta.get("keypoint_flip_map", [])],
                )
                rules = spec.meta.get("keypoint_connection_rules")
                if rules:
                    meta.set(keypoint_connection_rules=[(a, b, tuple(c)) for a, b, c in rules])
        elif spec.kind == "voc":
            register_pascal_voc(
                name,
                spec.voc_dir,
                spec.split,
                int(spec.year or 2007),
                class_names=list(spec.meta["thing_classes"]),
            )
        elif spec.kind == "cityscapes_instance":
            DatasetCatalog.register(name, lambda i=spec.image_root, g=spec.gt_dir: _cityscapes_instance_dicts(i, g))
            MetadataCatalog.get(name).set(
                thing_classes=list(spec.meta["thing_classes"]),
                image_dir=spec.image_root,
                gt_dir=spec.gt_dir,
                evaluator_type="cityscapes_instance",
            )
        elif spec.kind == "cityscapes_sem_seg":
            DatasetCatalog.register(name, lambda i=spec.image_root, g=spec.gt_dir: load_cityscapes_semantic(i, g))
            MetadataCatalog.get(name).set(
                stuff_classes=list(spec.meta["stuff_classes"]),
                ignore_label=255,
                image_dir=spec.image_root,
                gt_dir=spec.gt_dir,
                evaluator_type="cityscapes_sem_seg",
            )
        else:
            raise ValueError(f"unknown dataset kind {spec.kind!r} for {name}")


# --------------------------------------------------------------------------------------------
# Cityscapes evaluators (cityscapesScripts through detco_bench.cityscapes_eval)


def _evaluators() -> tuple[type, type]:
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import DatasetEvaluator
    from detectron2.utils import comm

    from detco_bench.cityscapes_eval import InstanceWriter, SemanticWriter

    class _CityscapesEvaluator(DatasetEvaluator):
        writer_cls: type = SemanticWriter

        def __init__(self, dataset_name: str, output_dir: str) -> None:
            self._meta = MetadataCatalog.get(dataset_name)
            self._work = Path(output_dir) / "cityscapes"

        def reset(self) -> None:
            # All processes of the job write into one folder (one machine, or a shared file system).
            if comm.is_main_process() and self._work.exists():
                shutil.rmtree(self._work)
            comm.synchronize()
            self._writer = self.writer_cls(self._work)

    class CityscapesInstanceEvaluator(_CityscapesEvaluator):
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
        writer_cls = SemanticWriter

        def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
            for inp, out in zip(inputs, outputs, strict=True):
                pred = out["sem_seg"].argmax(dim=0).to("cpu").numpy()
                self._writer.add(inp["file_name"], pred)

        def evaluate(self) -> dict[str, Any]:
            comm.synchronize()
            if not comm.is_main_process():
                return {}
            return {"sem_seg": self._writer.evaluate(self._meta.gt_dir)}

    return CityscapesInstanceEvaluator, CityscapesSemSegEvaluator


def trainer_class(plan: TransferPlan) -> type:
    """DefaultTrainer with the plan's evaluators and the semantic-segmentation data pipeline."""
    from detectron2.data import DatasetMapper, build_detection_train_loader
    from detectron2.data import transforms as T
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    instance_eval, sem_eval = _evaluators()
    specs = plan.datasets

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
            out = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            kind = specs[dataset_name].kind
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
                return instance_eval(dataset_name, out)
            if kind == "cityscapes_sem_seg":
                return sem_eval(dataset_name, out)
            raise ValueError(f"no evaluator for dataset kind {kind!r}")

        @classmethod
        def build_train_loader(cls, cfg: Any) -> Any:
            if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
                return build_detection_train_loader(cfg)
            # Rescale first, then crop, then flip (detectron2's default mapper would crop first).
            augs: list[Any] = [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
                )
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
            return build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True, augmentations=augs))

    return Trainer


# --------------------------------------------------------------------------------------------
# Running


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


def _setup(plan: TransferPlan, cfg: Any) -> None:
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    rank = comm.get_rank()
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    setup_logger(out, distributed_rank=rank, name="fvcore")
    setup_logger(out, distributed_rank=rank, name="detectron2")
    setup_logger(out, distributed_rank=rank, name="detco_bench", abbrev_name="detco")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    if comm.is_main_process():
        with open(os.path.join(out, "detectron2_config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.dump())
    logger.info(
        "task %s, engine detectron2, world size %d, device %s",
        plan.task_label,
        comm.get_world_size(),
        cfg.MODEL.DEVICE,
    )
    logger.info("batch/lr rule: %s", plan.scaling.get("summary"))
    for a in plan.adaptations:
        logger.info("adapted %s: %r -> %r (%s)", a["key"], a["from"], a["to"], a["why"])
    if plan.opts:
        logger.info("--opts %s", " ".join(plan.opts))


def _worker(plan_dict: dict[str, Any]) -> str | None:
    """One process of the job (any rank): train, evaluate, and (rank 0) write the record."""
    from detectron2.utils import comm

    plan = TransferPlan.from_dict(plan_dict)
    t0 = time.monotonic()
    register_components()
    register_datasets(plan)
    cfg = build_cfg(plan)
    _setup(plan, cfg)
    trainer = trainer_class(plan)(cfg)
    trainer.resume_or_load(resume=plan.resume)
    if trainer.start_iter:
        logger.info("resuming from iteration %d", trainer.start_iter)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    comm.synchronize()
    if not comm.is_main_process():
        return None
    if not results:
        raise RuntimeError("evaluation produced no results")
    metrics = flatten_results(results)
    logger.info("metrics: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in plan.metrics))
    return str(finish_run(plan, metrics, time.monotonic() - t0))


def _init_distributed_from_env(plan: TransferPlan) -> None:
    """Inside a Slurm task (submitit exported MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK)."""
    import torch.distributed as dist
    from detectron2.utils import comm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = plan.device == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", str(plan.gpus))))
    comm.synchronize()


def run(plan: TransferPlan) -> Path:
    """Train and evaluate `plan` with detectron2; returns the result record's path."""
    if plan.launcher == "slurm":
        _init_distributed_from_env(plan)
        path = _worker(plan.to_dict())
        return Path(path) if path else plan.record_path
    if plan.world_size > 1:
        from detectron2.engine import launch

        launch(
            _worker,
            plan.gpus,
            num_machines=plan.num_machines,
            machine_rank=plan.machine_rank,
            dist_url=plan.dist_url,
            args=(plan.to_dict(),),
        )
        return plan.record_path
    path = _worker(plan.to_dict())
    return Path(path) if path else plan.record_path
