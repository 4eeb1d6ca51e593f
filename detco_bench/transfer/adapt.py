"""Adaptations of a task's config to this run: the checkpoint's architecture, the device, the
number of processes (the batch / learning-rate rule), and the datasets (subsets, custom jsons,
synthetic data's classes and keypoints). Every change is recorded with its reason."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detco_bench.checkpoints import ARCHS
from detco_bench.datasets import (
    DatasetSpec,
    builtin_dataset,
    coco_person_keypoint_meta,
    custom_coco_dataset,
    keypoint_flip_map,
    read_coco_categories,
    synthetic_manifest,
)
from detco_bench.errors import UserError
from detco_bench.synthetic import (
    COCO_CATEGORIES,
    COCO_KEYPOINT_CATEGORY,
    KEYPOINT_FLIP_MAP,
    KEYPOINT_OKS_SIGMAS,
    KEYPOINT_SKELETON,
)
from detco_bench.tasks import COCO_FORMAT_FAMILIES, Task, parse_subset
from detco_bench.transfer_config import SYNC_BN_NAMES, flatten, get_key, set_key

#: The protocol's configs are written for 8 GPUs (2 images per GPU; 1 for Cityscapes instance).
REFERENCE_WORLD_SIZE = 8
SCALING_RULES: tuple[str, ...] = ("linear", "none")

#: Solver keys counted in iterations: divided by the batch factor under the linear rule.
_ITER_KEYS = ("SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD")


class ConfigChanges:
    """Edits of the effective config, each kept with the reason for it (the plan's adaptations)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.items: list[dict[str, Any]] = []

    def set(self, key: str, value: Any, why: str) -> None:
        old = get_key(self.cfg, key, None)
        if old == value:
            return
        set_key(self.cfg, key, value)
        self.items.append({"key": key, "from": old, "to": value, "why": why})


def adapt_checkpoint(changes: ConfigChanges, task: Task, arch: str) -> None:
    spec = ARCHS[arch]
    changes.set("MODEL.RESNETS.DEPTH", spec.depth, f"checkpoint is a {arch}")
    if spec.block == "basic":
        if task.family in ("c4", "voc_c4"):
            raise UserError(
                f"{task.name} uses the C4 res5 RoI head, which needs a bottleneck ResNet "
                f"(resnet50/101/152); the checkpoint is a {arch}"
            )
        if task.family == "cityscapes_sem":
            raise UserError(
                f"{task.name} dilates res5, which detectron2 supports for bottleneck ResNets only; "
                f"the checkpoint is a {arch}"
            )
        changes.set("MODEL.RESNETS.RES2_OUT_CHANNELS", 64, f"{arch} has 64-channel res2 (basic blocks)")


def adapt_device(changes: ConfigChanges, device: str) -> None:
    changes.set("MODEL.DEVICE", device, f"--device {device}")
    if device == "cpu":
        for key, value in flatten(changes.cfg).items():
            if key.rsplit(".", 1)[-1] == "NORM" and value in SYNC_BN_NAMES:
                changes.set(
                    key,
                    "BN",
                    "--device cpu runs one process: synchronized BN becomes plain BN "
                    "(detectron2's SyncBN raises on CPU with a process group)",
                )


def adapt_workers(changes: ConfigChanges, world_size: int, cpus: int | None = None) -> None:
    """Data-loading workers per process no more than this machine's CPUs can run side by side
    (Detectron2's default of 4 per process oversubscribes a laptop or a 2-core CI runner)."""
    cpus = cpus or os.cpu_count() or 1
    fits = max(1, cpus // max(world_size, 1))
    workers = int(get_key(changes.cfg, "DATALOADER.NUM_WORKERS"))
    if workers > fits:
        changes.set("DATALOADER.NUM_WORKERS", fits, f"this machine has {cpus} CPU(s) for {world_size} process(es)")


def apply_scaling(
    cfg: dict[str, Any], world_size: int, rule: str = "linear", reference: int = REFERENCE_WORLD_SIZE
) -> dict[str, Any]:
    """Apply the batch / learning-rate rule for `world_size` processes in place; returns what was done.

    "linear" (the default; Goyal et al.'s linear scaling rule, as detectron2's
    REFERENCE_WORLD_SIZE mechanism applies it): keep the images per GPU of the 8-GPU protocol,
    so IMS_PER_BATCH scales by world_size/8, BASE_LR by the same factor, and MAX_ITER, STEPS,
    WARMUP_ITERS, CHECKPOINT_PERIOD, EVAL_PERIOD by its inverse (same number of epochs).
    "none": keep the protocol's total batch and schedule (each process holds IMS_PER_BATCH /
    world_size images; needs the memory for it).
    """
    if rule not in SCALING_RULES:
        raise UserError(f"unknown --scaling {rule!r}; choose one of {', '.join(SCALING_RULES)}")
    info: dict[str, Any] = {
        "rule": rule,
        "reference_world_size": reference,
        "world_size": world_size,
        "changes": {},
    }
    batch = int(get_key(cfg, "SOLVER.IMS_PER_BATCH"))
    if rule == "none" or world_size == reference:
        if batch % world_size:
            raise UserError(
                f"SOLVER.IMS_PER_BATCH {batch} is not divisible by {world_size} processes "
                "(use --scaling linear or set SOLVER.IMS_PER_BATCH with --opts)"
            )
        info["per_process_batch"] = batch // world_size
        info["summary"] = (
            f"protocol batch kept: {batch} images over {world_size} process(es) "
            f"({batch // world_size} per process), lr {get_key(cfg, 'SOLVER.BASE_LR')}"
        )
        return info
    if batch % reference:
        raise UserError(f"SOLVER.IMS_PER_BATCH {batch} is not a multiple of the reference {reference} GPUs")
    per_gpu = batch // reference
    new_batch = per_gpu * world_size
    factor = new_batch / batch

    def change(key: str, value: Any) -> None:
        old = get_key(cfg, key, None)
        if old is None or old == value:
            return
        info["changes"][key] = [old, value]
        set_key(cfg, key, value)

    change("SOLVER.IMS_PER_BATCH", new_batch)
    change("SOLVER.BASE_LR", float(get_key(cfg, "SOLVER.BASE_LR")) * factor)
    for key in _ITER_KEYS:
        value = get_key(cfg, key, None)
        if isinstance(value, int) and value > 0:
            change(key, max(1, int(round(value / factor))))
    steps = get_key(cfg, "SOLVER.STEPS", None)
    if steps:
        change("SOLVER.STEPS", [max(1, int(round(s / factor))) for s in steps])
    info["per_process_batch"] = per_gpu
    info["factor"] = factor
    info["summary"] = (
        f"linear scaling rule: {reference} GPUs x {per_gpu} images -> {world_size} process(es) x "
        f"{per_gpu} images; " + ", ".join(f"{k.split('.', 1)[1]} {a} -> {b}" for k, (a, b) in info["changes"].items())
    )
    return info


def dataset_specs(
    task: Task,
    cfg: dict[str, Any],
    changes: ConfigChanges,
    root: Path,
    *,
    subset: str | None,
    subset_seed: int | None,
    train_json: str | None,
    val_json: str | None,
    images: str | None,
    val_images: str | None,
    out: Path,
) -> dict[str, DatasetSpec]:
    train_names = list(get_key(cfg, "DATASETS.TRAIN"))
    test_names = list(get_key(cfg, "DATASETS.TEST"))
    keypoints = task.family == "keypoint"
    specs: dict[str, DatasetSpec] = {}
    custom = train_json or val_json or images or val_images
    if custom:
        if not task.supports_custom_data:
            raise UserError(
                f"--train-json/--val-json/--images apply to COCO-format tasks; {task.name} uses "
                f"{', '.join(train_names)}"
            )
        if not (train_json and val_json and images):
            raise UserError(
                "a custom COCO-format dataset needs --train-json, --val-json and --images "
                "(--val-images defaults to --images)"
            )
        train = custom_coco_dataset("custom_train", Path(train_json).expanduser(), Path(images).expanduser(), keypoints)
        val = custom_coco_dataset(
            "custom_val", Path(val_json).expanduser(), Path(val_images or images).expanduser(), keypoints
        )
        specs = {"custom_train": train, "custom_val": val}
        changes.set("DATASETS.TRAIN", ["custom_train"], "--train-json/--images: custom COCO-format dataset")
        changes.set("DATASETS.TEST", ["custom_val"], "--val-json: custom COCO-format dataset")
        train_names, test_names = ["custom_train"], ["custom_val"]
    else:
        for name in dict.fromkeys(train_names + test_names):
            specs[name] = builtin_dataset(name, root)

    if subset:
        fraction = parse_subset(subset)
        assert fraction is not None
        seed = int(subset_seed if subset_seed is not None else 0)
        new_names = []
        for name in train_names:
            spec = specs.pop(name)
            pct = subset.rstrip("%")
            sub_name = f"{name}_subset{pct}pct_seed{seed}"
            stem = Path(spec.json_file or "train.json").stem
            spec.name = sub_name
            spec.subset = {"source": spec.json_file, "fraction": fraction, "seed": seed}
            spec.json_file = str(out / "datasets" / f"{stem}_subset{pct}pct_seed{seed}.json")
            specs[sub_name] = spec
            new_names.append(sub_name)
        changes.set("DATASETS.TRAIN", new_names, f"--subset {subset} (seed {seed}): semi-supervised setting")
    adapt_metadata(task, changes, specs, root)
    return specs


def adapt_metadata(task: Task, changes: ConfigChanges, specs: dict[str, DatasetSpec], root: Path) -> None:
    """Class / keypoint metadata of synthetic or custom data (real datasets keep the protocol's)."""
    manifest = synthetic_manifest(root)
    coco_specs = [s for s in specs.values() if s.kind == "coco"]
    if task.family in COCO_FORMAT_FAMILIES and coco_specs:
        custom = [s for s in coco_specs if s.custom]
        if custom:
            cats = read_coco_categories(custom[0].json_file or "")
            where = f"categories of {custom[0].json_file}"
        elif manifest is not None:
            cats = [COCO_KEYPOINT_CATEGORY] if task.family == "keypoint" else list(COCO_CATEGORIES)
            where = f"synthetic dataset ({root / 'synthetic_dataset.json'})"
        else:
            return
        if task.family == "keypoint":
            names = list(cats[0].get("keypoints") or [])
            if not names:
                raise UserError(f"{where}: a keypoint task needs a category with a 'keypoints' list")
            changes.set("MODEL.ROI_HEADS.NUM_CLASSES", 1, f"{where}: one keypoint category")
            changes.set("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", len(names), f"{where}: {len(names)} keypoints")
            meta: dict[str, Any] = {"keypoint_names": names}
            if manifest is not None and not custom:
                meta["keypoint_flip_map"] = [list(p) for p in KEYPOINT_FLIP_MAP]
                meta["keypoint_connection_rules"] = [
                    [names[a - 1], names[b - 1], [255, 255, 255]] for a, b in KEYPOINT_SKELETON
                ]
                sigmas = list(KEYPOINT_OKS_SIGMAS)
            elif len(names) == 17:
                meta.update(coco_person_keypoint_meta())
                sigmas = []
            else:
                meta["keypoint_flip_map"] = keypoint_flip_map(names)
                sigmas = [0.05] * len(names)
            if sigmas:
                meta["keypoint_oks_sigmas"] = sigmas
                changes.set("TEST.KEYPOINT_OKS_SIGMAS", sigmas, f"{where}: OKS sigmas for {len(names)} keypoints")
            for s in coco_specs:
                s.meta.update(meta)
        else:
            key = "MODEL.RETINANET.NUM_CLASSES" if task.family == "retinanet" else "MODEL.ROI_HEADS.NUM_CLASSES"
            changes.set(key, len(cats), f"{where}: {len(cats)} categories")
    elif task.family == "voc_c4" and manifest is not None:
        classes = list(manifest.get("classes") or [])
        changes.set(
            "MODEL.ROI_HEADS.NUM_CLASSES",
            len(classes),
            f"synthetic dataset ({root / 'synthetic_dataset.json'}): {len(classes)} VOC classes",
        )
        for s in specs.values():
            s.meta["thing_classes"] = classes



def fit_schedule(before_opts: dict[str, Any], cfg: dict[str, Any], opts_keys: set[str]) -> list[dict[str, Any]]:
    """Keep a schedule consistent when ``--opts`` change SOLVER.MAX_ITER: the warm-up and the lr
    steps the user did not set are scaled by the same factor, so a short run warms up and decays
    where the full one does (a warm-up of 8000 iterations would otherwise outlast a 20-iteration
    run). Edits `cfg` in place and returns the changes; refuses a schedule that cannot run."""
    changes = ConfigChanges(cfg)
    old, new = int(get_key(before_opts, "SOLVER.MAX_ITER")), int(get_key(cfg, "SOLVER.MAX_ITER"))
    if new < 1:
        raise UserError(f"SOLVER.MAX_ITER {new}: a run needs at least one iteration")
    batch = int(get_key(cfg, "SOLVER.IMS_PER_BATCH"))
    if batch < 1:
        raise UserError(f"SOLVER.IMS_PER_BATCH {batch}: a batch needs at least one image")
    if "SOLVER.MAX_ITER" in opts_keys and old > 0 and new != old:
        factor = new / old
        why = f"--opts SOLVER.MAX_ITER {new}: scaled with the schedule ({old} -> {new} iterations)"
        if "SOLVER.WARMUP_ITERS" not in opts_keys:
            changes.set("SOLVER.WARMUP_ITERS", int(round(int(get_key(cfg, "SOLVER.WARMUP_ITERS")) * factor)), why)
        steps = get_key(cfg, "SOLVER.STEPS", None)
        if steps and "SOLVER.STEPS" not in opts_keys:
            # Steps that collapse onto each other or past the end are dropped: the schedulers of both
            # engines (fvcore's MultiStepParamScheduler) need increasing steps inside the run.
            scaled = sorted({int(round(s * factor)) for s in steps} & set(range(1, new)))
            changes.set("SOLVER.STEPS", scaled, why)
    warmup = int(get_key(cfg, "SOLVER.WARMUP_ITERS"))
    if warmup > new:
        raise UserError(f"SOLVER.WARMUP_ITERS {warmup} > SOLVER.MAX_ITER {new}: the learning rate would never "
                        "leave warm-up; set a shorter SOLVER.WARMUP_ITERS")
    return changes.items


def check_settings(cfg: dict[str, Any]) -> None:
    """Refuse values no engine can train with, at plan time (one line) instead of in the engine
    after the job folder exists: a non-positive lr, lr steps that do not increase, a ResNet depth
    that does not exist, non-positive training sizes."""
    lr = float(get_key(cfg, "SOLVER.BASE_LR"))
    if not lr > 0:
        raise UserError(f"SOLVER.BASE_LR {lr}: the learning rate must be positive")
    steps = [int(s) for s in get_key(cfg, "SOLVER.STEPS", None) or []]
    if any(s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise UserError(f"SOLVER.STEPS {steps}: the lr steps must be positive and increasing")
    depths = sorted(spec.depth for spec in ARCHS.values())
    depth = int(get_key(cfg, "MODEL.RESNETS.DEPTH", 50))
    if depth not in depths:
        raise UserError(f"MODEL.RESNETS.DEPTH {depth}: choose one of {', '.join(map(str, depths))}")
    sizes = get_key(cfg, "INPUT.MIN_SIZE_TRAIN")
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]
    if not sizes or any(int(s) < 1 for s in sizes) or int(get_key(cfg, "INPUT.MAX_SIZE_TRAIN")) < 1:
        raise UserError(f"INPUT.MIN_SIZE_TRAIN {sizes} / INPUT.MAX_SIZE_TRAIN {get_key(cfg, 'INPUT.MAX_SIZE_TRAIN')}: "
                        "training sizes must be positive")
