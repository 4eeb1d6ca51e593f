"""MoCo / DetCo's linear classification protocol on images: the frozen backbone runs on every
augmented training image of every epoch; DDP under torchrun; resumable per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets import ImageFolder

from detco_bench.errors import UserError
from detco_bench.linear.backbone import FrozenBackbone
from detco_bench.linear.config import LinearConfig
from detco_bench.linear.data import train_transform, val_transform
from detco_bench.linear.head import epoch_lr, linear_head, reported_ks, sgd_optimizer, topk_correct
from pretrain import distributed as dist_utils
from pretrain.atomic import atomic_torch_save

STATE_NAME = "linear_state.pth"


def run_protocol(backbone: FrozenBackbone, root: Path, classes: list[str], cfg: LinearConfig, out: Path,
                 device: torch.device, progress: Progress) -> dict[str, float]:
    world, rank = dist_utils.world_size(), dist_utils.rank()
    if cfg.batch_size % world:
        raise UserError(f"batch size {cfg.batch_size} is not divisible by {world} processes")
    train_set = ImageFolder(str(root / "train"), transform=train_transform(cfg.image_size))
    val_set = ImageFolder(str(root / "val"), transform=val_transform(cfg.image_size))
    torch.manual_seed(cfg.seed)
    head = linear_head(backbone.channels[-1], len(classes)).to(device)
    optimizer = sgd_optimizer(head, cfg)
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
    task = progress.add_task("linear protocol", total=cfg.epochs, completed=start_epoch, stats="")
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        # Per-epoch seeds: the augmentation of epoch e is the same whether or not the run resumed.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)
        loader = DataLoader(train_set, batch_size=cfg.batch_size // world, sampler=sampler,
                            num_workers=cfg.workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
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
                f.write(json.dumps({"step": epoch + 1, "epoch": epoch + 1, "lr": epoch_lr(cfg, epoch),
                                    "loss": total_loss / max(seen, 1)}) + "\n")
        progress.update(task, completed=epoch + 1,
                        stats=f"loss {total_loss / max(seen, 1):.4f}  lr {epoch_lr(cfg, epoch):g}")
    return evaluate_images(backbone, head, val_set, cfg, device, len(classes))


@torch.no_grad()
def evaluate_images(backbone: FrozenBackbone, head: nn.Linear, val_set: Dataset, cfg: LinearConfig,
                    device: torch.device, classes: int) -> dict[str, float]:
    """Top-k of head(backbone(image)) over `val_set`, the ranks each taking every world-th image."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    indices = list(range(rank, len(val_set), world))  # type: ignore[arg-type]
    loader = DataLoader(torch.utils.data.Subset(val_set, indices), batch_size=max(1, cfg.batch_size // world),
                        num_workers=cfg.workers)
    ks = reported_ks(classes)
    counts = torch.zeros(len(ks) + 1, dtype=torch.float64, device=device)
    head.eval()
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        correct = topk_correct(head(backbone(images)[-1]), target, ks)
        counts += torch.tensor([*correct, len(target)], dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(counts)
    return {f"top{k}": 100.0 * float(counts[i] / counts[-1]) for i, k in enumerate(ks)}
