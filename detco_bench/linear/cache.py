"""The feature cache of the cached modes: pooled res2..res5 features of each view of a split, as
memory-mapped .npy files under OUT/cache/<split>-<copy>/, extracted once and resumable per chunk.

Copy 0 of a split is its centre crop (the validation transform); copies 1..K of the training
split are K passes of the protocol's training augmentation, each seeded by (seed, copy)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from detco_bench.linear.backbone import FrozenBackbone
from detco_bench.linear.config import LinearConfig
from detco_bench.linear.data import IndexRange, normalize, train_crop, val_crop
from pretrain.atomic import atomic_write_json
from pretrain.detco import STAGES


@dataclass
class CachedSplit:
    """One split's cached views: views[i][s] is the (N, C_s) feature array of stage s for view
    copies[i]; labels (N,) int64 class ids, the same row order in every view."""

    copies: list[int]
    views: list[list[np.ndarray]]
    labels: np.ndarray

    def stage(self, s: int) -> list[torch.Tensor]:
        """Every view of stage s as (N, C_s) tensors sharing the cache's memory (no copy)."""
        return [torch.from_numpy(np.asarray(view[s])) for view in self.views]

    def view(self, copy: int, s: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.views[self.copies.index(copy)][s]))


def cache_key(checkpoint_sha: str, cfg: LinearConfig, split: str, copy: int) -> dict[str, Any]:
    return {"checkpoint_sha256": checkpoint_sha, "split": split, "copy": copy, "image_size": cfg.image_size,
            "dtype": cfg.cache_dtype, "seed": cfg.seed, "version": 1}


def extract_features(backbone: FrozenBackbone, dataset: ImageFolder, folder: Path, key: dict[str, Any],
                     batch_size: int, workers: int, device: torch.device, progress: Progress,
                     label: str, seed: int) -> tuple[list[np.memmap], np.ndarray]:
    """Pooled res2..res5 features of `dataset` (uint8 crops (3, H, W), normalised here per batch),
    cached under `folder` as memory-mapped .npy files.

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
    to_float = normalize()
    while done < n:
        stop = min(n, done + chunk)
        torch.manual_seed(seed + done)  # augmented copies: the same crops after a resume
        loader = DataLoader(dataset, batch_size=batch_size, sampler=IndexRange(done, stop), num_workers=workers,
                            generator=torch.Generator().manual_seed(seed + done))
        row = done
        for images, _ in loader:
            # The dataset yields uint8 crops; normalised per batch (the per-image bits, one call).
            for f, s in zip(feats, backbone(to_float(images.to(device))), strict=True):
                f[row:row + len(images)] = s.float().cpu().numpy().astype(dtype)
            row += len(images)
            progress.update(task, completed=row)
        for f in feats:
            f.flush()
        done = stop
        atomic_write_json(meta_path, {"key": key, "rows": n, "done": done})
    return feats, labels


def cache_splits(backbone: FrozenBackbone, root: Path, cfg: LinearConfig, out: Path, checkpoint_sha: str,
                 device: torch.device, progress: Progress) -> dict[str, CachedSplit]:
    """Extract (or reuse) the views this job needs: `cfg.train_copies()` of train, the centre crop of val."""
    splits = {}
    for split, copies in (("train", cfg.train_copies()), ("val", [0])):
        views, labels = [], np.zeros(0, dtype=np.int64)
        for copy in copies:
            transform = val_crop(cfg.image_size) if copy == 0 else train_crop(cfg.image_size)
            dataset = ImageFolder(str(root / split), transform=transform)
            feats, labels = extract_features(
                backbone, dataset, out / "cache" / f"{split}-{copy}", cache_key(checkpoint_sha, cfg, split, copy),
                cfg.batch_size, cfg.workers, device, progress, f"{split}#{copy}",
                seed=cfg.seed * 1_000_003 + copy)
            views.append(feats)
        splits[split] = CachedSplit(copies, views, labels)
    return splits
