"""Batches: training batches that can start at any iteration, test-set shards, the loaders.

`TrainBatches` is Detectron2's TrainingSampler (an endless stream of seeded permutations, rank r
taking every world-th index) plus AspectRatioGroupedDataset (landscape and portrait images batched
separately); it starts at any iteration without loading images.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from detco_bench.engines.torchvision.data.datasets import TestDataset, TrainDataset, sample_seed
from detco_bench.engines.torchvision.data.records import Record


class TrainBatches:
    """Endless training batches of ``(index, augmentation_seed)`` for one rank, from iteration
    `start_iter` on.

    Detectron2's TrainingSampler + AspectRatioGroupedDataset: the index stream is
    ``randperm(n)`` again and again from one generator seeded with `seed` (the same on every rank),
    rank r taking elements r, r + world, ...; samples are grouped by orientation (width > height or
    not) and a batch is emitted when a group has `batch_size` samples. Everything is computed from
    (seed, rank, world), so batch k is the same whether or not the run was interrupted before it.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_iter: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not group_ids:
            raise ValueError("no training images")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world = world
        self.start_iter = start_iter

    def _indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        n = len(self.group_ids)

        def stream() -> Iterator[int]:
            while True:
                yield from torch.randperm(n, generator=g).tolist()

        return itertools.islice(stream(), self.rank, None, self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = {}
        produced = 0
        for position, idx in enumerate(self._indices()):
            bucket = buckets.setdefault(self.group_ids[idx], [])
            bucket.append((idx, sample_seed(self.seed, self.rank, position)))
            if len(bucket) == self.batch_size:
                batch = list(bucket)
                bucket.clear()
                if produced >= self.start_iter:
                    yield batch
                produced += 1


def group_ids(records: list[Record], grouping: bool) -> list[int]:
    """Detectron2's aspect-ratio groups of AspectRatioGroupedDataset: 0 for landscape images
    (width > height), 1 for the others; all 0 without grouping."""
    if not grouping:
        return [0] * len(records)
    return [0 if int(r["width"]) > int(r["height"]) else 1 for r in records]


def _collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def train_loader(dataset: TrainDataset, batches: TrainBatches, workers: int, pin_memory: bool = False) -> DataLoader:
    """The training DataLoader: `batches` yields the (index, seed) items of each batch."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def shard(n: int, rank: int, world: int) -> range:
    """Detectron2's InferenceSampler: contiguous, near-equal shards of range(n)."""
    size, left = divmod(n, world)
    sizes = [size + int(r < left) for r in range(world)]
    begin = sum(sizes[:rank])
    return range(begin, begin + sizes[rank])


def test_loader(dataset: TestDataset, rank: int, world: int, workers: int) -> DataLoader:
    """The test DataLoader of one rank: its `shard`, one image per batch, in order."""
    return DataLoader(
        dataset,
        sampler=list(shard(len(dataset), rank, world)),
        batch_size=1,
        num_workers=workers,
        collate_fn=_collate,
    )
