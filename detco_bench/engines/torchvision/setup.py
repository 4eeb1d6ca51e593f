"""The setup phase of a torchvision-engine job: everything training and evaluation share.

`setup_job` reads the plan's effective config, seeds the process, loads the training and test
records, checks the class and keypoint counts against the data (a mismatch is a `UserError`: one
line), builds the model on the converted backbone weights (SyncBatchNorm when several GPU processes
train and the config asks for it) and picks the AMP mode; the result is a `Job`. What the engine
refuses in the config alone is found at plan time (`check`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from detco_bench.checkpoints import arch_of_depth
from detco_bench.datasets import DatasetSpec
from detco_bench.engines.torchvision.console import RunLog
from detco_bench.engines.torchvision.data.load import load_records
from detco_bench.engines.torchvision.data.records import DatasetMeta, Record
from detco_bench.engines.torchvision.distributed import ProcessGroup
from detco_bench.engines.torchvision.models.build import build_model, uses_sync_bn
from detco_bench.engines.torchvision.settings import Settings, class_count_key, keypoint_on, mask_on
from detco_bench.engines.torchvision.train.loop import amp_settings
from detco_bench.errors import UserError
from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer_config import get_key

ENGINE = "torchvision"


@dataclass
class TestSet:
    """One DATASETS.TEST entry: its spec, records and label metadata."""

    spec: DatasetSpec
    records: list[Record]
    meta: DatasetMeta


@dataclass
class Job:
    """One process's view of a run after setup."""

    plan: TransferPlan
    settings: Settings
    group: ProcessGroup
    device: torch.device
    out: Path
    console: Console
    log: RunLog
    seed: int  # SEED; negative: a time-based seed was used
    sem: bool  # semantic segmentation (cityscapes_sem)
    mask_on: bool
    keypoint_on: bool
    train_records: list[Record]
    meta: DatasetMeta  # of the training data
    tests: list[TestSet]
    model: nn.Module  # on `device`; not wrapped in DDP
    amp_dtype: torch.dtype | None
    scaler: Any  # torch.amp.GradScaler on CUDA with AMP, else None

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def world(self) -> int:
        return self.group.world


def arch_of(plan: TransferPlan) -> str:
    """The ResNet of the run: the checkpoint's, else MODEL.RESNETS.DEPTH (random init)."""
    if plan.checkpoint is not None:
        return plan.checkpoint.arch
    depth = int(plan.config.get("MODEL", {}).get("RESNETS", {}).get("DEPTH", 50))
    return arch_of_depth(depth)


def load_weights(plan: TransferPlan) -> dict[str, torch.Tensor] | None:
    """The converted backbone weights (torchvision ResNet naming, without fc), or None."""
    if not plan.weights:
        return None
    data = torch.load(plan.weights, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    return {k: v for k, v in data.items() if not k.startswith("fc.")}


def load_datasets(
    plan: TransferPlan, s: Settings, keypoint_on: bool
) -> tuple[list[Record], DatasetMeta, list[TestSet]]:
    """The records of every DATASETS.TRAIN entry (which must agree on their classes) and the
    test sets of DATASETS.TEST."""
    train_records: list[Record] = []
    train_meta = None
    for name in get_key(plan.config, "DATASETS.TRAIN"):
        records, meta = load_records(plan.datasets[name], s, keypoints=keypoint_on)
        if train_meta is not None and meta.classes != train_meta.classes:
            raise UserError(f"training datasets disagree on their classes: {train_meta.classes} vs {meta.classes}")
        train_meta = train_meta or meta
        train_records.extend(records)
    tests = []
    for name in get_key(plan.config, "DATASETS.TEST"):
        records, meta = load_records(plan.datasets[name], s, keypoints=keypoint_on)
        tests.append(TestSet(plan.datasets[name], records, meta))
    if train_meta is None:
        raise UserError("DATASETS.TRAIN is empty")
    return train_records, train_meta, tests


def num_classes(plan: TransferPlan, s: Settings, meta: DatasetMeta) -> int:
    """The config's class count for the family's head, checked against the training data."""
    key = class_count_key(plan.family)
    n = s.int(key)
    if n != len(meta.classes):
        raise UserError(f"{key} is {n} but the training data has {len(meta.classes)} classes ({meta.classes[:6]})")
    return n


def _log_header(plan: TransferPlan, log: RunLog, world: int, device: torch.device) -> None:
    log(f"task {plan.task_label}, engine {ENGINE}, world size {world}, device {device}", echo=True)
    log(f"batch/lr rule: {plan.scaling.get('summary')}")
    for a in plan.adaptations:
        log(f"adapted {a['key']}: {a['from']!r} -> {a['to']!r} ({a['why']})")
    if plan.opts:
        log(f"--opts {' '.join(plan.opts)}")


def setup_job(plan: TransferPlan, group: ProcessGroup) -> Job:
    """Everything a process needs before training (see the module docstring)."""
    device = torch.device("cuda", group.local_rank) if plan.device == "cuda" else torch.device("cpu")
    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    log = RunLog(out, group.rank, console)
    s = Settings(plan.config)
    seed = s.int("SEED")
    torch.manual_seed((seed if seed >= 0 else int(time.time())) + group.rank)
    _log_header(plan, log, group.world, device)

    sem = plan.family == "cityscapes_sem"
    masks, keypoints = mask_on(plan.family, s), keypoint_on(plan.family, s)
    train_records, meta, tests = load_datasets(plan, s, keypoints)
    classes = num_classes(plan, s, meta)
    num_keypoints = len(meta.keypoint_names) if keypoints else None
    if keypoints and s.int("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS") != num_keypoints:
        raise UserError(
            f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is {s.int('MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS')} but the "
            f"data has {num_keypoints} keypoints"
        )
    weights = load_weights(plan)
    arch = arch_of(plan)
    log(f"backbone {arch} from {plan.weights}" if weights else f"backbone {arch}: random init")
    model = build_model(plan.family, s, arch, weights, num_classes=classes, num_keypoints=num_keypoints)
    if group.world > 1 and device.type == "cuda" and uses_sync_bn(s):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    amp_dtype, scaler = amp_settings(bool(s["SOLVER.AMP.ENABLED"]), device)
    return Job(
        plan=plan,
        settings=s,
        group=group,
        device=device,
        out=out,
        console=console,
        log=log,
        seed=seed,
        sem=sem,
        mask_on=masks,
        keypoint_on=keypoints,
        train_records=train_records,
        meta=meta,
        tests=tests,
        model=model,
        amp_dtype=amp_dtype,
        scaler=scaler,
    )
