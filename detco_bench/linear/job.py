"""One linear-evaluation job end to end: check the input, load and freeze the backbone, run the
mode, check the backbone stayed frozen, write the result record."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from detco_bench.checkpoints import LoadedBackbone, load_backbone
from detco_bench.errors import UserError
from detco_bench.linear.backbone import FrozenBackbone, check_frozen, fingerprint
from detco_bench.linear.cache import cache_splits
from detco_bench.linear.config import LinearConfig, protocol_fidelity
from detco_bench.linear.data import validate_imagefolder
from detco_bench.linear.fast import evaluate_head, fit_lbfgs_head, train_sgd_head
from detco_bench.linear.knn import knn_classify
from detco_bench.linear.naming import default_dataset_name, task_name
from detco_bench.linear.protocol import run_protocol
from detco_bench.paths import check_output_folder, make_output_folder
from detco_bench.records import CheckpointInfo, ResultRecord, collect_provenance, write_record
from detco_bench.records.settings import META_KEY
from pretrain import distributed as dist_utils
from pretrain.atomic import atomic_write_json
from pretrain.detco import STAGES
from pretrain.lock import folder_lock, is_lock_file

ENGINE = "builtin-linear"
RES5 = len(STAGES) - 1


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console,
                    disable=not enabled)


def run_cached(backbone: FrozenBackbone, root: Path, classes: list[str], cfg: LinearConfig, out: Path,
               sha: str, device: torch.device, progress: Progress) -> tuple[dict[str, float], dict[str, Any]]:
    """fast / knn / stages: extract (or reuse) the cache, then fit on it. Returns the metrics and
    how each head was fitted (per stage: head kind, training views, chosen weight decay)."""
    splits = cache_splits(backbone, root, cfg, out, sha, device, progress)
    train, val = splits["train"], splits["val"]
    train_y, val_y = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
    n = len(classes)
    if cfg.mode == "knn":
        return knn_classify(train.view(0, RES5), train_y, val.view(0, RES5), val_y, n, cfg.knn_k,
                            cfg.knn_temperature), {}
    metrics: dict[str, float] = {}
    fits: dict[str, Any] = {}
    for s in (RES5,) if cfg.mode == "fast" else range(len(STAGES)):
        views = train.stage(s)
        if cfg.fast_head == "lbfgs":
            head, fit = fit_lbfgs_head(views, train_y, train.view(0, s), n, cfg, device)
        else:
            head, fit = train_sgd_head(views, train_y, n, cfg, device)
        fits[STAGES[s]] = fit | {"train_views": train.copies}
        prefix = "" if cfg.mode == "fast" else f"{STAGES[s]}/"
        metrics |= evaluate_head(head.cpu(), val.view(0, s), val_y, n, prefix)
    return metrics, fits


def prepare_out(out: Path, resume: bool) -> None:
    """Refuse an --out that is not a folder, cannot be written, or (without `resume`) holds
    anything but its lock file; create it."""
    check_output_folder(out)
    if out.is_dir() and any(not is_lock_file(p) for p in out.iterdir()) and not resume:
        raise UserError(f"output folder {out} is not empty; pass --resume to continue that run or choose another --out")
    make_output_folder(out)


def run_linear(checkpoint: Path, data: Path, out: Path, cfg: LinearConfig, *, fmt: str = "auto",
               method: str | None = None, baseline: bool = False, dataset_name: str | None = None,
               resume: bool = False,
               show_progress: bool = True, console: Console | None = None,
               before_check: Callable[[FrozenBackbone], None] | None = None) -> Path:
    """Run one linear-evaluation job; returns the path of its result record (in `out`).

    The record's config is the effective one: `cfg`, the data and checkpoint, and for the cached
    linear modes `head_fit`, per stage how the head was fitted (sgd or lbfgs, the cached views it
    trained on, the weight decay the lbfgs sweep chose and the held-out top-1 of each candidate).
    """
    cfg.validate()
    console = console or Console(stderr=True)
    classes = validate_imagefolder(data)
    loaded = load_backbone(checkpoint, fmt)
    device = dist_utils.init_from_env()
    is_main = dist_utils.rank() == 0
    if is_main:
        prepare_out(out, resume)
    # One writer per folder: the main process holds the lock to the end (a second one exits 2).
    with folder_lock(out) if is_main else nullcontext():
        if is_main:
            prepare_out(out, resume)  # again: another writer may have filled it before we got the lock
            done = sorted(out.glob("*.record.json"))
            if done:
                console.print(f"linear evaluation in {out} already finished: {done[0]}", soft_wrap=True)
                return done[0]
        return _run_locked(checkpoint, data, out, cfg, loaded, classes, device, method=method, baseline=baseline,
                           dataset_name=dataset_name, show_progress=show_progress, console=console,
                           before_check=before_check)


def _run_locked(checkpoint: Path, data: Path, out: Path, cfg: LinearConfig, loaded: LoadedBackbone,
                classes: list[str], device: torch.device, *, method: str | None, baseline: bool,
                dataset_name: str | None, show_progress: bool, console: Console,
                before_check: Callable[[FrozenBackbone], None] | None) -> Path:
    """`run_linear` once the checks passed and the folder is this process's (see there)."""
    is_main = dist_utils.rank() == 0
    sha = CheckpointInfo.from_file(checkpoint, "?", None).sha256 or ""
    dataset = dataset_name or default_dataset_name(data, len(classes))
    backbone = FrozenBackbone(loaded).to(device)
    expected = fingerprint(backbone.trunk.state_dict())
    started, t0 = datetime.now(timezone.utc), time.time()
    config = asdict(cfg) | {"checkpoint": str(checkpoint), "data": str(data), "dataset": dataset,
                            "classes": len(classes), "arch": loaded.arch, "checkpoint_format": loaded.format,
                            META_KEY: {"protocol": protocol_fidelity(cfg, dataset, len(classes))}}
    if is_main:
        atomic_write_json(out / "config.json", config)
    with _progress(console, show_progress and is_main) as progress:
        if cfg.mode == "protocol":
            metrics = run_protocol(backbone, data, classes, cfg, out, device, progress)
        else:
            metrics, fits = run_cached(backbone, data, classes, cfg, out, sha, device, progress)
            if fits:
                config["head_fit"] = fits
    if before_check is not None:
        before_check(backbone)
    check_frozen(backbone, expected)
    if not is_main:
        return out
    pretrain_epochs = loaded.meta.get("epoch") if loaded.format == "detco-bench" else None
    record = ResultRecord.create(
        task=task_name(cfg.mode, dataset), engine=ENGINE, metrics=metrics,
        checkpoint=CheckpointInfo(str(checkpoint), sha, method or str(loaded.meta.get("method", "unknown")),
                                  int(pretrain_epochs) if isinstance(pretrain_epochs, int) else None,
                                  baseline),
        seed=cfg.seed, config=config,
        provenance=collect_provenance(_device_name(device), time.time() - t0, started),
        artifacts={"metrics_log": "metrics.jsonl" if cfg.mode == "protocol" else None, "output_dir": "."})
    return write_record(out, record)


def _device_name(device: torch.device) -> str:
    procs = f", {dist_utils.world_size()} processes" if dist_utils.world_size() > 1 else ""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}{procs}"
    return f"cpu x{torch.get_num_threads()} threads{procs}"
