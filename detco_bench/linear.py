"""Classification transfer of a frozen backbone: the MoCo linear protocol, a cached-feature
probe, weighted kNN, and per-stage probes.

Modes (all on an ImageFolder layout ROOT/train/<class>/*, ROOT/val/<class>/*):
  protocol  MoCo/DetCo's recipe: frozen backbone in eval mode, global-average-pooled res5 into one
            linear layer (weights N(0, 0.01), bias 0); SGD lr 30, momentum 0.9, wd 0, batch 256,
            100 epochs, lr x0.1 at epochs 60 and 80; RandomResizedCrop 224 + flip for training,
            Resize 256 + CenterCrop 224 for validation. DDP under torchrun; a checkpoint per epoch.
  fast      features extracted once (center crop, plus K augmented copies of the training set if
            asked), cached on disk as memory-mapped arrays, the same linear head trained on them.
  knn       weighted kNN on cached, L2-normalised features: k=20, weights exp(cos / 0.07).
  stages    a linear head on the cached pooled res2, res3, res4 and res5 features, each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from detco_bench.checkpoints import LoadedBackbone, load_backbone
from detco_bench.errors import UserError
from detco_bench.records import CheckpointInfo, ResultRecord, collect_provenance, write_record
from pretrain import distributed as dist_utils
from pretrain.atomic import atomic_torch_save, atomic_write_json
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data import IMAGE_EXTENSIONS
from pretrain.detco import STAGES, ResNetTrunk

MODES = ("protocol", "fast", "knn", "stages")
ENGINE = "builtin-linear"
STATE_NAME = "linear_state.pth"


@dataclass
class LinearConfig:
    mode: str = "protocol"
    epochs: int = 100
    batch_size: int = 256  # global
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (60, 80)
    image_size: int = 224  # crop; validation resizes to image_size * 256 / 224 first
    workers: int = 8
    seed: int = 0
    aug_copies: int = 0  # fast mode: extra augmented passes over the training set
    cache_dtype: str = "float32"  # or float16
    knn_k: int = 20
    knn_temperature: float = 0.07

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.cache_dtype not in ("float32", "float16"):
            raise UserError(f"--cache-dtype must be float32 or float16, got {self.cache_dtype!r}")
        for name in ("epochs", "batch_size", "image_size", "knn_k"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------- data

def validate_imagefolder(root: str | os.PathLike) -> list[str]:
    """Check ROOT/{train,val}/<class>/<images>; return the class names. Says precisely what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise UserError(f"{folder} is missing: expected an ImageFolder layout {root}/{{train,val}}/<class>/<image>")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not names:
            raise UserError(f"{folder} has no class sub-folders")
        empty = [n for n in names if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in (folder / n).rglob("*"))]
        if empty:
            raise UserError(f"{folder} has class folders without images: {', '.join(empty[:5])}"
                            + (" ..." if len(empty) > 5 else ""))
        classes[split] = names
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise UserError(f"train and val classes differ: only in train {only_train[:5]}, only in val {only_val[:5]}")
    if len(classes["train"]) < 2:
        raise UserError(f"{root}/train has a single class; a classifier needs at least two")
    return classes["train"]


def train_transform(size: int) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def val_transform(size: int) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _Shard(Sampler[int]):
    """Indices [start, stop) of a dataset in order (resumable feature extraction)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


# ------------------------------------------------------------------------------------ backbone

class FrozenBackbone(nn.Module):
    """A checkpoint's ResNet in eval mode, no gradients: images (N, 3, H, W) -> pooled features
    per stage [res2 .. res5], each (N, C_s)."""

    def __init__(self, loaded: LoadedBackbone) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(loaded.arch)
        self.trunk.load_state_dict(loaded.state_dict, strict=True)
        self.trunk.eval()
        for p in self.trunk.parameters():
            p.requires_grad = False
        self.channels = self.trunk.stage_channels

    def train(self, mode: bool = True) -> FrozenBackbone:  # stays in eval mode: BN statistics are frozen
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [f.mean(dim=(2, 3)) for f in self.trunk(images)]


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor of a state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_frozen(backbone: FrozenBackbone, expected: str) -> None:
    """MoCo's sanity check: the backbone after training equals the checkpoint's weights."""
    now = fingerprint(backbone.trunk.state_dict())
    if now != expected:
        raise RuntimeError("the backbone changed during linear evaluation (weights or BN statistics "
                           "differ from the checkpoint): the probe is not measuring the frozen features")


def linear_head(in_dim: int, classes: int) -> nn.Linear:
    head = nn.Linear(in_dim, classes)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    return head


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    top = logits.topk(max(ks), dim=1).indices
    hit = top == target[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


def _ks(classes: int) -> tuple[int, ...]:
    return (1, 5) if classes > 5 else (1,)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console,
                    disable=not enabled)


# --------------------------------------------------------------------------- protocol (images)

def _optimizer(head: nn.Module, cfg: LinearConfig) -> torch.optim.SGD:
    return torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _epoch_lr(cfg: LinearConfig, epoch: int) -> float:
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


def run_protocol(backbone: FrozenBackbone, root: Path, classes: list[str], cfg: LinearConfig, out: Path,
                 device: torch.device, console: Console, show_progress: bool) -> dict[str, float]:
    world, rank = dist_utils.world_size(), dist_utils.rank()
    if cfg.batch_size % world:
        raise UserError(f"batch size {cfg.batch_size} is not divisible by {world} processes")
    train_set = ImageFolder(str(root / "train"), transform=train_transform(cfg.image_size))
    val_set = ImageFolder(str(root / "val"), transform=val_transform(cfg.image_size))
    torch.manual_seed(cfg.seed)
    head = linear_head(backbone.channels[-1], len(classes)).to(device)
    optimizer = _optimizer(head, cfg)
    start_epoch = 0
    state_path = out / STATE_NAME
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
    net: nn.Module = head
    if world > 1:
        net = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=False)
    with _progress(console, show_progress and rank == 0) as progress:
        task = progress.add_task("linear protocol", total=cfg.epochs, completed=start_epoch, stats="")
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            # Per-epoch seeds: the augmentation of epoch e is the same whether or not the run resumed.
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)
            loader = DataLoader(train_set, batch_size=cfg.batch_size // world, sampler=sampler,
                                num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            for group in optimizer.param_groups:
                group["lr"] = _epoch_lr(cfg, epoch)
            total_loss, seen = 0.0, 0
            for images, target in loader:
                images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
                loss = F.cross_entropy(net(backbone(images)[-1]), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(target)
                seen += len(target)
            if rank == 0:
                atomic_torch_save(state_path, {"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                                               "epoch": epoch + 1})
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": epoch + 1, "epoch": epoch + 1, "lr": _epoch_lr(cfg, epoch),
                                        "loss": total_loss / max(seen, 1)}) + "\n")
            progress.update(task, completed=epoch + 1,
                            stats=f"loss {total_loss / max(seen, 1):.4f}  lr {_epoch_lr(cfg, epoch):g}")
    return _evaluate_images(backbone, head, val_set, cfg, device, len(classes))


@torch.no_grad()
def _evaluate_images(backbone: FrozenBackbone, head: nn.Linear, val_set: Dataset, cfg: LinearConfig,
                     device: torch.device, classes: int) -> dict[str, float]:
    world, rank = dist_utils.world_size(), dist_utils.rank()
    indices = list(range(rank, len(val_set), world))  # type: ignore[arg-type]
    loader = DataLoader(torch.utils.data.Subset(val_set, indices), batch_size=max(1, cfg.batch_size // world),
                        num_workers=cfg.workers)
    ks = _ks(classes)
    counts = torch.zeros(len(ks) + 1, dtype=torch.float64, device=device)
    head.eval()
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        correct = topk_correct(head(backbone(images)[-1]), target, ks)
        counts += torch.tensor([*correct, len(target)], dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(counts)
    return {f"top{k}": 100.0 * float(counts[i] / counts[-1]) for i, k in enumerate(ks)}


# -------------------------------------------------------------------------- cached features

def _cache_key(loaded_sha: str, cfg: LinearConfig, split: str, copy: int) -> dict[str, Any]:
    return {"checkpoint_sha256": loaded_sha, "split": split, "copy": copy, "image_size": cfg.image_size,
            "dtype": cfg.cache_dtype, "seed": cfg.seed, "version": 1}


def extract_features(backbone: FrozenBackbone, dataset: ImageFolder, folder: Path, key: dict[str, Any],
                     batch_size: int, workers: int, device: torch.device, progress: Progress,
                     label: str, seed: int) -> tuple[list[np.memmap], np.ndarray]:
    """Pooled res2..res5 features of `dataset`, cached under `folder` as memory-mapped .npy files.

    Extraction is resumable: `meta.json` records how many rows are done (written after each
    chunk, atomically), so a killed extraction continues where it stopped. A cache made for
    another checkpoint or transform is rebuilt.
    """
    n = len(dataset)
    dtype = np.float16 if key["dtype"] == "float16" else np.float32
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    fresh = meta.get("key") != key or meta.get("rows") != n
    folder.mkdir(parents=True, exist_ok=True)
    mode = "w+" if fresh else "r+"
    feats = [np.lib.format.open_memmap(folder / f"{s}.npy", mode=mode, dtype=dtype, shape=(n, c))
             for s, c in zip(STAGES, backbone.channels, strict=True)]
    labels = np.asarray(dataset.targets, dtype=np.int64)
    done = 0 if fresh else int(meta.get("done", 0))
    if fresh:
        atomic_write_json(meta_path, {"key": key, "rows": n, "done": 0})
    task = progress.add_task(f"features {label}", total=n, completed=done, stats="")
    chunk = max(batch_size * 8, 1)
    while done < n:
        stop = min(n, done + chunk)
        torch.manual_seed(seed + done)  # augmented copies: the same crops after a resume
        loader = DataLoader(dataset, batch_size=batch_size, sampler=_Shard(done, stop), num_workers=workers,
                            generator=torch.Generator().manual_seed(seed + done))
        row = done
        for images, _ in loader:
            for f, s in zip(feats, backbone(images.to(device)), strict=True):
                f[row:row + len(images)] = s.float().cpu().numpy().astype(dtype)
            row += len(images)
            progress.update(task, completed=row)
        for f in feats:
            f.flush()
        done = stop
        atomic_write_json(meta_path, {"key": key, "rows": n, "done": done})
    return feats, labels


def train_head_on_features(x: torch.Tensor, y: torch.Tensor, classes: int, cfg: LinearConfig,
                           device: torch.device) -> nn.Linear:
    """The protocol's linear head and schedule, on cached features x (N, C) with labels y (N,)."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = linear_head(x.shape[1], classes).to(device)
    optimizer = _optimizer(head, cfg)
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = _epoch_lr(cfg, epoch)
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(head(x[idx].to(device).float()), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head


@torch.no_grad()
def evaluate_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, classes: int, prefix: str = ""
                  ) -> dict[str, float]:
    ks = _ks(classes)
    correct = topk_correct(head(x.float()), y, ks)
    return {f"{prefix}top{k}": 100.0 * c / len(y) for k, c in zip(ks, correct, strict=True)}


@torch.no_grad()
def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> dict[str, float]:
    """Weighted kNN (as in InstDisc / DINO): cosine similarity, the k nearest training features
    vote for their class with weight exp(sim / T)."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, len(bank))
    ks = _ks(classes)
    correct = [0] * len(ks)
    for i in range(0, len(val_x), chunk):
        q = F.normalize(val_x[i:i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        for j, c in enumerate(topk_correct(votes, val_y[i:i + chunk], ks)):
            correct[j] += c
    return {f"knn_top{kk}": 100.0 * c / len(val_x) for kk, c in zip(ks, correct, strict=True)}


def run_cached(backbone: FrozenBackbone, root: Path, classes: list[str], cfg: LinearConfig, out: Path,
               sha: str, device: torch.device, console: Console, show_progress: bool) -> dict[str, float]:
    """fast / knn / stages: extract (or reuse) the cache, then fit on it."""
    center = val_transform(cfg.image_size)
    splits: dict[str, list[tuple[list[np.memmap], np.ndarray]]] = {"train": [], "val": []}
    with _progress(console, show_progress) as progress:
        for split in ("train", "val"):
            dataset = ImageFolder(str(root / split), transform=center)
            copies = [(0, dataset)]
            if split == "train" and cfg.mode in ("fast", "stages"):
                aug = ImageFolder(str(root / split), transform=train_transform(cfg.image_size))
                copies += [(c, aug) for c in range(1, cfg.aug_copies + 1)]
            for copy, ds in copies:
                folder = out / "cache" / f"{split}-{copy}"
                splits[split].append(extract_features(
                    backbone, ds, folder, _cache_key(sha, cfg, split, copy), cfg.batch_size, cfg.workers, device,
                    progress, f"{split}#{copy}", seed=cfg.seed * 1_000_003 + copy))

    def stage_arrays(split: str, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs = [torch.from_numpy(np.asarray(f[s])) for f, _ in splits[split]]
        ys = [torch.from_numpy(y) for _, y in splits[split]]
        return torch.cat(xs), torch.cat(ys)

    n = len(classes)
    if cfg.mode == "knn":
        tx, ty = stage_arrays("train", 3)
        vx, vy = stage_arrays("val", 3)
        return knn_classify(tx, ty, vx, vy, n, cfg.knn_k, cfg.knn_temperature)
    metrics: dict[str, float] = {}
    stage_ids = (3,) if cfg.mode == "fast" else (0, 1, 2, 3)
    for s in stage_ids:
        tx, ty = stage_arrays("train", s)
        vx, vy = stage_arrays("val", s)
        head = train_head_on_features(tx, ty, n, cfg, device)
        prefix = "" if cfg.mode == "fast" else f"{STAGES[s]}/"
        metrics |= evaluate_head(head.cpu(), vx, vy, n, prefix)
    return metrics


# ----------------------------------------------------------------------------------- the job

def task_name(mode: str, dataset: str) -> str:
    """`linear_protocol` on ImageNet is the paper's number; elsewhere the dataset is in the name,
    so a probe on another dataset is never compared with the ImageNet reference."""
    from detco_bench.task_label import TaskLabel

    base = {"protocol": "linear_protocol", "fast": "linear_fast", "knn": "linear_knn",
            "stages": "linear_stages"}[mode]
    return str(TaskLabel(base, variant=None if dataset == "imagenet" else dataset))


def default_dataset_name(data: Path, classes: int) -> str:
    """"imagenet" only for a 1000-class dataset; otherwise the folder's name (never plain "imagenet")."""
    if classes == 1000:
        return "imagenet"
    name = data.resolve().name
    return f"{name}-{classes}classes" if name.lower() == "imagenet" else name


def prepare_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UserError(f"output folder {out} is not empty; pass --resume to continue that run or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror or exc}") from None


def run_linear(checkpoint: Path, data: Path, out: Path, cfg: LinearConfig, *, fmt: str = "auto",
               method: str | None = None, dataset_name: str | None = None, resume: bool = False,
               show_progress: bool = True, console: Console | None = None,
               before_check: Callable[[FrozenBackbone], None] | None = None) -> Path:
    """Run one linear-evaluation job; returns the path of its result record (in `out`)."""
    cfg.validate()
    console = console or Console(stderr=True)
    classes = validate_imagefolder(data)
    loaded = load_backbone(checkpoint, fmt)
    device = dist_utils.init_from_env()
    is_main = dist_utils.rank() == 0
    if is_main:
        prepare_out(out, resume)
        done = sorted(out.glob("*.record.json"))
        if done:
            console.print(f"linear evaluation in {out} already finished: {done[0]}", soft_wrap=True)
            return done[0]
    sha = CheckpointInfo.from_file(checkpoint, "?", None).sha256 or ""
    dataset = dataset_name or default_dataset_name(data, len(classes))
    backbone = FrozenBackbone(loaded).to(device)
    expected = fingerprint(backbone.trunk.state_dict())
    started, t0 = datetime.now(timezone.utc), time.time()
    config = asdict(cfg) | {"checkpoint": str(checkpoint), "data": str(data), "dataset": dataset,
                            "classes": len(classes), "arch": loaded.arch, "checkpoint_format": loaded.format}
    if is_main:
        atomic_write_json(out / "config.json", config)
    if cfg.mode == "protocol":
        metrics = run_protocol(backbone, data, classes, cfg, out, device, console, show_progress)
    else:
        metrics = run_cached(backbone, data, classes, cfg, out, sha, device, console, show_progress)
    if before_check is not None:
        before_check(backbone)
    check_frozen(backbone, expected)
    if not is_main:
        return out
    pretrain_epochs = loaded.meta.get("epoch") if loaded.format == "detco-bench" else None
    record = ResultRecord.create(
        task=task_name(cfg.mode, dataset), engine=ENGINE, metrics=metrics,
        checkpoint=CheckpointInfo(str(checkpoint), sha, method or str(loaded.meta.get("method", "unknown")),
                                  int(pretrain_epochs) if isinstance(pretrain_epochs, int) else None),
        seed=cfg.seed, config=config,
        provenance=collect_provenance(_device_name(device), time.time() - t0, started),
        artifacts={"metrics_log": "metrics.jsonl" if cfg.mode == "protocol" else None, "output_dir": "."})
    return write_record(out, record)


def _device_name(device: torch.device) -> str:
    procs = f", {dist_utils.world_size()} processes" if dist_utils.world_size() > 1 else ""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}{procs}"
    return f"cpu x{torch.get_num_threads()} threads{procs}"


def preset_config(mode: str, **overrides: Any) -> LinearConfig:
    cfg = replace(LinearConfig(mode=mode), **{k: v for k, v in overrides.items() if v is not None})
    if "milestones" not in overrides and cfg.epochs != 100:
        # Keep the protocol's shape (decay at 60% and 80% of training) for shorter schedules.
        cfg = replace(cfg, milestones=(math.ceil(cfg.epochs * 0.6), math.ceil(cfg.epochs * 0.8)))
    cfg.validate()
    return cfg
