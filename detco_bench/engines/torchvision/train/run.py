"""The training phase of a torchvision-engine job: SOLVER.MAX_ITER iterations, resumable.

Builds the training data (Detectron2's filters, `TrainDataset`, `TrainBatches` split over the
processes), the optimizer and the checkpointer; resumes from ``last_checkpoint`` when the plan says
so; runs `train_loop` (under DDP with several processes; with TEST.EVAL_PERIOD > 0 it evaluates
every EVAL_PERIOD iterations, each evaluation a metrics.jsonl line), PreciseBN, and saves
``model_final.pth``. A run whose checkpoint is already at MAX_ITER goes straight to evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from detco_bench.engines.torchvision.console import ProgressBar
from detco_bench.engines.torchvision.data.batching import TrainBatches, group_ids, train_loader
from detco_bench.engines.torchvision.data.datasets import TrainDataset
from detco_bench.engines.torchvision.data.records import filter_training_records
from detco_bench.engines.torchvision.setup import Job
from detco_bench.engines.torchvision.train.checkpoint import FINAL_NAME, Checkpointer
from detco_bench.engines.torchvision.train.loop import PeriodicEval, precise_bn, train_loop
from detco_bench.engines.torchvision.train.metrics_log import MetricsLog
from detco_bench.engines.torchvision.train.solver import build_optimizer


def _train_set(job: Job) -> tuple[TrainDataset, list[int]]:
    """The training dataset after Detectron2's filters, and its aspect-ratio groups."""
    s = job.settings
    filtered = filter_training_records(
        job.train_records,
        filter_empty=bool(s["DATALOADER.FILTER_EMPTY_ANNOTATIONS"]) and not job.sem,
        min_keypoints=s.int("MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE") if job.keypoint_on else 0,
    )
    job.log(f"training images: {len(filtered)} of {len(job.train_records)} (after Detectron2's filters)")
    train_set = TrainDataset(
        filtered,
        s,
        job.meta,
        task="sem_seg" if job.sem else "detection",
        label_offset=int(job.model.label_offset),
        mask_on=job.mask_on,
        keypoint_on=job.keypoint_on,
    )
    return train_set, group_ids(filtered, bool(s["DATALOADER.ASPECT_RATIO_GROUPING"]))


class PreciseBNStream:
    """TEST.PRECISE_BN passes over one stream of training batches (seeded SEED + 1) that each pass
    continues, as Detectron2's PreciseBN hook keeps its loader; a resumed run skips the batches of
    the `passes_done` passes before its checkpoint."""

    def __init__(
        self, job: Job, train_set: TrainDataset, groups: list[int], per_process: int, passes_done: int
    ) -> None:
        s = job.settings
        self.job = job
        self.train_set = train_set
        self.num_iter = s.int("TEST.PRECISE_BN.NUM_ITER")
        self.workers = s.int("DATALOADER.NUM_WORKERS")
        self.batches = TrainBatches(
            groups,
            per_process,
            seed=max(job.seed, 0) + 1,
            rank=job.rank,
            world=job.world,
            start_iter=passes_done * self.num_iter,
        )
        self._iter: Iterator[Any] | None = None

    def __call__(self) -> None:
        """One pass: the BN statistics of `job.model` recomputed over NUM_ITER batches."""
        if self._iter is None:
            self._iter = iter(train_loader(self.train_set, self.batches, self.workers))
        n = precise_bn(self.job.model, self._iter, self.num_iter, self.job.device)
        self.job.log(f"PreciseBN: statistics of {n} BN layers recomputed over {self.num_iter} batches")

    def close(self) -> None:
        self._iter = None  # shuts the loader's worker processes down


def log_final_evaluation(job: Job, metrics: dict[str, float]) -> None:
    """With TEST.EVAL_PERIOD > 0, the final evaluation joins the periodic ones in metrics.jsonl (at
    SOLVER.MAX_ITER; rank 0 holds the metrics)."""
    if job.settings.int("TEST.EVAL_PERIOD") <= 0:
        return
    log = MetricsLog(job.out, job.rank, job.settings.int("SOLVER.MAX_ITER"), append=True)
    log.write(job.settings.int("SOLVER.MAX_ITER"), metrics)
    log.close()


def train(job: Job, evaluate: Callable[[], dict[str, float]] | None = None) -> None:
    """Train `job.model` to SOLVER.MAX_ITER (from the last checkpoint when resuming). `evaluate`
    (every rank calls it; the metrics on rank 0) runs every TEST.EVAL_PERIOD iterations."""
    s = job.settings
    rank, world, device = job.rank, job.world, job.device
    ims = s.int("SOLVER.IMS_PER_BATCH")
    if ims % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {ims} is not divisible by {world} processes")
    per_process = ims // world
    train_set, groups = _train_set(job)
    workers = s.int("DATALOADER.NUM_WORKERS")
    seed = max(job.seed, 0)

    model = job.model
    optimizer = build_optimizer(model, s)
    checkpointer = Checkpointer(job.out, rank, world, meta={"run_id": job.plan.run_id, "task": job.plan.task_label},
                                keep=job.plan.options.keep_checkpoints)
    start_iter = 0
    last = checkpointer.last() if job.plan.resume else None
    if last is not None:
        start_iter = checkpointer.load(last, model, optimizer, job.scaler)
        job.log(f"resuming from {last.name}: {start_iter} iterations done", echo=True)
    max_iter = s.int("SOLVER.MAX_ITER")
    if start_iter >= max_iter:
        job.log("training already complete; evaluating", echo=True)
        return

    batches = TrainBatches(groups, per_process, seed=seed, rank=rank, world=world, start_iter=start_iter)
    loader = train_loader(train_set, batches, workers, pin_memory=device.type == "cuda")
    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[job.group.local_rank] if device.type == "cuda" else None, broadcast_buffers=False
        )
    metrics_log = MetricsLog(job.out, rank, start_iter)
    bar = ProgressBar(rank, max_iter, job.console, start=start_iter)

    def tick(done: int, loss: float, lr: float) -> None:
        bar.update(done, f"loss {loss:.3f} lr {lr:.2e}")

    eval_period = s.int("TEST.EVAL_PERIOD") if evaluate is not None else 0
    bn_stream = None
    if bool(s["TEST.PRECISE_BN.ENABLED"]):
        # Detectron2 also recomputes the BN statistics before every periodic evaluation.
        passes_done = start_iter // eval_period if eval_period > 0 else 0
        bn_stream = PreciseBNStream(job, train_set, groups, per_process, passes_done)
    periodic = None
    if eval_period > 0 and evaluate is not None:

        def evaluate_at(done: int) -> None:
            bar.stop()
            try:
                metrics_log.write(done, evaluate())
            finally:
                bar.start()

        periodic = PeriodicEval(eval_period, evaluate_at, bn_stream)

    batch_iter = iter(loader)
    # After iter(loader): creating the loader's iterator draws from the global RNG.
    checkpointer.restore_rng()
    try:
        bar.start()
        train_loop(
            train_model,
            optimizer,
            batch_iter,
            s,
            start_iter=start_iter,
            device=device,
            checkpointer=checkpointer,
            log=metrics_log,
            amp_dtype=job.amp_dtype,
            scaler=job.scaler,
            progress=tick,
            logger=job.log,
            periodic=periodic,
        )
    finally:
        bar.stop()
        metrics_log.close()
        del batch_iter  # shuts the loader's worker processes down
    if bn_stream is not None:
        bn_stream()
        bn_stream.close()
    checkpointer.save(FINAL_NAME, model, optimizer, job.scaler, max_iter)
