"""The training phase of a torchvision-engine job: SOLVER.MAX_ITER iterations, resumable.

Builds the training data (Detectron2's filters, `TrainDataset`, `TrainBatches` split over the
processes), the optimizer and the checkpointer; resumes from ``last_checkpoint`` when the plan says
so; runs `train_loop` (under DDP with several processes), PreciseBN, and saves ``model_final.pth``.
A run whose checkpoint is already at MAX_ITER goes straight to evaluation.
"""

from __future__ import annotations

import torch

from detco_bench.engines.torchvision.console import ProgressBar
from detco_bench.engines.torchvision.data.batching import TrainBatches, group_ids, train_loader
from detco_bench.engines.torchvision.data.datasets import TrainDataset
from detco_bench.engines.torchvision.data.records import filter_training_records
from detco_bench.engines.torchvision.setup import Job
from detco_bench.engines.torchvision.train.checkpoint import FINAL_NAME, Checkpointer
from detco_bench.engines.torchvision.train.loop import precise_bn, train_loop
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


def train(job: Job) -> None:
    """Train `job.model` to SOLVER.MAX_ITER (from the last checkpoint when resuming)."""
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
    checkpointer = Checkpointer(job.out, rank, world, meta={"run_id": job.plan.run_id, "task": job.plan.task_label})
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
        )
    finally:
        bar.stop()
        metrics_log.close()
        del batch_iter  # shuts the loader's worker processes down
    if bool(s["TEST.PRECISE_BN.ENABLED"]):
        n_iter = s.int("TEST.PRECISE_BN.NUM_ITER")
        bn_batches = TrainBatches(groups, per_process, seed=seed + 1, rank=rank, world=world)
        n = precise_bn(model, iter(train_loader(train_set, bn_batches, workers)), n_iter, device)
        job.log(f"PreciseBN: statistics of {n} BN layers recomputed over {n_iter} batches")
    checkpointer.save(FINAL_NAME, model, optimizer, job.scaler, max_iter)
