"""The torchvision engine: ``detco-bench transfer --engine torchvision`` (the default without detectron2).

``run(plan) -> Path`` trains and evaluates a `TransferPlan` with the models of
`detco_bench.tv_engine.models` and writes the result record (engine "torchvision") through
`detco_bench.transfer.finish_run`. It reads the same effective config as the Detectron2 engine, so
``--opts SOLVER.MAX_ITER 20 SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN "(256,)" ...`` mean the
same for both.

Launch: one process (CPU or one GPU); ``--gpus N`` / ``--num-machines`` spawn N processes per
machine that join one process group at ``--dist-url`` (NCCL on GPUs, gloo on CPU), as detectron2's
``launch`` does; under torchrun or a Slurm task (submitit) the process joins the group described by
the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK). SOLVER.IMS_PER_BATCH is the total
over all processes. Synchronized BN (NORM "SyncBN" in the config) becomes torch's SyncBatchNorm when
several GPU processes train; on one process, or on CPU, it is plain BatchNorm (the plan already
turns SyncBN into BN for ``--device cpu``).

The output folder (``--out``) gets ``log.txt``, ``metrics.jsonl``, ``tb/`` (TensorBoard),
``model_<iter>.pth`` every SOLVER.CHECKPOINT_PERIOD iterations, ``model_final.pth``,
``last_checkpoint`` and ``inference/<dataset>/``. An interrupted job is resumed from
``last_checkpoint`` at exactly the saved iteration; a finished one is not rerun unless --force
(`detco_bench.transfer` decides, see `TransferPlan.resume`).
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from detco_bench.transfer import TransferPlan, finish_run

ENGINE = "torchvision"
_DEPTH_TO_ARCH = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101", 152: "resnet152"}


class _Log:
    """log.txt in the output folder (rank 0) plus the console for the important lines."""

    def __init__(self, out: Path, rank: int, console: Any = None) -> None:
        self.rank = rank
        self.path = out / "log.txt" if rank == 0 else None
        self.console = console

    def __call__(self, message: str, echo: bool = False) -> None:
        if self.path is None:
            return
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a", encoding="utf-8") as f:
            for line in str(message).splitlines() or [""]:
                f.write(f"[{stamp}] {line}\n")
        if echo and self.console is not None:
            self.console.print(message, markup=False, highlight=False)


def _arch(plan: TransferPlan) -> str:
    if plan.checkpoint is not None:
        return plan.checkpoint.arch
    depth = int(plan.config.get("MODEL", {}).get("RESNETS", {}).get("DEPTH", 50))
    return _DEPTH_TO_ARCH[depth]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_distributed(plan: TransferPlan, local_rank: int | None, dist_url: str | None) -> tuple[int, int, int, bool]:
    """Join the process group if this job has several processes. Returns (rank, world, local_rank,
    created)."""
    import torch.distributed as dist

    cuda = plan.device == "cuda"
    if dist.is_available() and dist.is_initialized():
        lr = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
        return dist.get_rank(), dist.get_world_size(), lr, False
    if local_rank is not None:  # spawned by `run`
        rank = plan.machine_rank * plan.gpus + local_rank
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", init_method=dist_url, world_size=plan.world_size, rank=rank
        )
        return rank, plan.world_size, local_rank, True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lr = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:  # torchrun / submitit environment
        if cuda:
            torch.cuda.set_device(lr)
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
        return dist.get_rank(), dist.get_world_size(), lr, True
    return 0, 1, 0, False


def _load_weights(plan: TransferPlan) -> dict[str, torch.Tensor] | None:
    if not plan.weights:
        return None
    data = torch.load(plan.weights, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    return {k: v for k, v in data.items() if not k.startswith("fc.")}


def _datasets(plan: TransferPlan, s: Any, keypoint_on: bool) -> tuple[list[dict], Any, list[tuple[Any, list, Any]]]:
    from detco_bench.transfer_config import get_key
    from detco_bench.tv_engine.data import load_records

    train_records: list[dict] = []
    train_meta = None
    for name in get_key(plan.config, "DATASETS.TRAIN"):
        records, meta = load_records(plan.datasets[name], s, keypoints=keypoint_on)
        if train_meta is not None and meta.classes != train_meta.classes:
            raise ValueError(f"training datasets disagree on their classes: {train_meta.classes} vs {meta.classes}")
        train_meta = train_meta or meta
        train_records.extend(records)
    tests = []
    for name in get_key(plan.config, "DATASETS.TEST"):
        records, meta = load_records(plan.datasets[name], s, keypoints=keypoint_on)
        tests.append((plan.datasets[name], records, meta))
    if train_meta is None:
        raise ValueError("DATASETS.TRAIN is empty")
    return train_records, train_meta, tests


def _num_classes(plan: TransferPlan, s: Any, meta: Any) -> int:
    family = plan.family
    if family == "cityscapes_sem":
        key = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
    elif family == "retinanet":
        key = "MODEL.RETINANET.NUM_CLASSES"
    else:
        key = "MODEL.ROI_HEADS.NUM_CLASSES"
    n = s.int(key)
    if n != len(meta.classes):
        raise ValueError(f"{key} is {n} but the training data has {len(meta.classes)} classes ({meta.classes[:6]})")
    return n


def _progress(rank: int, total: int, start: int, console: Any, label: str = "train") -> tuple[Any, Any]:
    if rank != 0:
        return None, None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("train", total=total, completed=start, info="")
    return progress, task


def _worker(plan_dict: dict[str, Any], local_rank: int | None = None, dist_url: str | None = None) -> str | None:
    """One process of the job: train, evaluate, and (rank 0) write the record."""
    from rich.console import Console

    from detco_bench.tv_engine import data as D
    from detco_bench.tv_engine import evaluate as E
    from detco_bench.tv_engine import train as T
    from detco_bench.tv_engine.models import build_model, uses_sync_bn
    from detco_bench.tv_engine.settings import Settings

    plan = TransferPlan.from_dict(plan_dict)
    t0 = time.monotonic()
    rank, world, local, created = _init_distributed(plan, local_rank, dist_url)
    try:
        device = torch.device("cuda", local) if plan.device == "cuda" else torch.device("cpu")
        out = plan.output_dir
        out.mkdir(parents=True, exist_ok=True)
        console = Console(stderr=True)
        log = _Log(out, rank, console)
        s = Settings(plan.config)
        seed = s.int("SEED")
        torch.manual_seed((seed if seed >= 0 else int(time.time())) + rank)
        log(f"task {plan.task_label}, engine {ENGINE}, world size {world}, device {device}", echo=True)
        log(f"batch/lr rule: {plan.scaling.get('summary')}")
        for a in plan.adaptations:
            log(f"adapted {a['key']}: {a['from']!r} -> {a['to']!r} ({a['why']})")
        if plan.opts:
            log(f"--opts {' '.join(plan.opts)}")

        family = plan.family
        sem = family == "cityscapes_sem"
        mask_on = bool(s["MODEL.MASK_ON"]) and not sem
        keypoint_on = family == "keypoint" or bool(s["MODEL.KEYPOINT_ON"])
        train_records, meta, tests = _datasets(plan, s, keypoint_on)
        num_classes = _num_classes(plan, s, meta)
        num_keypoints = len(meta.keypoint_names) if keypoint_on else None
        if keypoint_on and s.int("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS") != num_keypoints:
            raise ValueError(
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is {s.int('MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS')} but the "
                f"data has {num_keypoints} keypoints"
            )
        weights = _load_weights(plan)
        log(f"backbone {_arch(plan)} from {plan.weights}" if weights else f"backbone {_arch(plan)}: random init")
        model = build_model(
            family, s, _arch(plan), weights, num_classes=num_classes, num_keypoints=num_keypoints
        )
        if world > 1 and device.type == "cuda" and uses_sync_bn(s):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)

        ims = s.int("SOLVER.IMS_PER_BATCH")
        if ims % world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH {ims} is not divisible by {world} processes")
        per_process = ims // world
        filtered = D.filter_training_records(
            train_records,
            filter_empty=bool(s["DATALOADER.FILTER_EMPTY_ANNOTATIONS"]) and not sem,
            min_keypoints=s.int("MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE") if keypoint_on else 0,
        )
        log(f"training images: {len(filtered)} of {len(train_records)} (after Detectron2's filters)")
        train_set = D.TrainDataset(
            filtered,
            s,
            meta,
            task="sem_seg" if sem else "detection",
            label_offset=int(model.label_offset),
            mask_on=mask_on,
            keypoint_on=keypoint_on,
        )
        groups = D.group_ids(filtered, bool(s["DATALOADER.ASPECT_RATIO_GROUPING"]))
        workers = s.int("DATALOADER.NUM_WORKERS")

        optimizer = T.build_optimizer(model, s)
        amp_dtype, scaler = T.amp_settings(bool(s["SOLVER.AMP.ENABLED"]), device)
        checkpointer = T.Checkpointer(out, rank, world, meta={"run_id": plan.run_id, "task": plan.task_label})
        start_iter = 0
        last = checkpointer.last() if plan.resume else None
        if last is not None:
            start_iter = checkpointer.load(last, model, optimizer, scaler)
            log(f"resuming from {last.name}: {start_iter} iterations done", echo=True)
        max_iter = s.int("SOLVER.MAX_ITER")

        if start_iter < max_iter:
            batches = D.TrainBatches(
                groups, per_process, seed=max(seed, 0), rank=rank, world=world, start_iter=start_iter
            )
            loader = D.train_loader(train_set, batches, workers, pin_memory=device.type == "cuda")
            train_model: torch.nn.Module = model
            if world > 1:
                train_model = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[local] if device.type == "cuda" else None, broadcast_buffers=False
                )
            metrics_log = T.MetricsLog(out, rank, start_iter)
            progress, task = _progress(rank, max_iter, start_iter, console)

            def tick(done: int, loss: float, lr: float) -> None:
                if progress is not None:
                    progress.update(task, completed=done, info=f"loss {loss:.3f} lr {lr:.2e}")

            batch_iter = iter(loader)
            checkpointer.restore_rng()
            try:
                if progress is not None:
                    progress.start()
                T.train_loop(
                    train_model,
                    optimizer,
                    batch_iter,
                    s,
                    start_iter=start_iter,
                    device=device,
                    checkpointer=checkpointer,
                    log=metrics_log,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                    progress=tick,
                    logger=log,
                )
            finally:
                if progress is not None:
                    progress.stop()
                metrics_log.close()
                del batch_iter  # shuts the loader's worker processes down
            if bool(s["TEST.PRECISE_BN.ENABLED"]):
                n_iter = s.int("TEST.PRECISE_BN.NUM_ITER")
                bn_batches = D.TrainBatches(groups, per_process, seed=max(seed, 0) + 1, rank=rank, world=world)
                n = T.precise_bn(model, iter(D.train_loader(train_set, bn_batches, workers)), n_iter, device)
                log(f"PreciseBN: statistics of {n} BN layers recomputed over {n_iter} batches")
            checkpointer.save(T.FINAL_NAME, model, optimizer, scaler, max_iter)
        else:
            log("training already complete; evaluating", echo=True)

        metrics: dict[str, float] = {}
        for spec, records, test_meta in tests:
            work = out / "inference" / spec.name
            work.mkdir(parents=True, exist_ok=True)
            loader = D.test_loader(D.TestDataset(records, str(s["INPUT.FORMAT"])), rank, world, workers)
            log(f"evaluating {spec.name}: {len(records)} images", echo=True)
            shard = len(D.shard(len(records), rank, world))
            eval_bar, eval_task = _progress(rank, shard, 0, console, label="inference")

            def advance(n: int, bar: Any = eval_bar, task_id: Any = eval_task) -> None:
                if bar is not None:
                    bar.advance(task_id, n)

            if eval_bar is not None:
                eval_bar.start()
            try:
                result = E.evaluate_dataset(
                    model,
                    loader,
                    spec,
                    test_meta,
                    device=device,
                    work_dir=work,
                    mask_on=mask_on,
                    keypoint_on=keypoint_on,
                    amp_dtype=amp_dtype,
                    log=log,
                    progress=advance,
                )
            finally:
                if eval_bar is not None:
                    eval_bar.stop()
            prefix = f"{spec.name}/" if len(tests) > 1 else ""
            metrics.update({prefix + k: v for k, v in result.items()})
        E.barrier()
        if rank != 0:
            return None
        metrics = E.finite(metrics)
        shown = [k for k in plan.metrics if k in metrics]
        log("metrics: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in shown or sorted(metrics)), echo=True)
        return str(finish_run(plan, metrics, time.monotonic() - t0))
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _spawned(local_rank: int, plan_dict: dict[str, Any], dist_url: str) -> None:
    if plan_dict.get("device") == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Several CPU processes on one machine: share the cores (torchrun sets OMP_NUM_THREADS=1).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(plan_dict.get("gpus", 1)))))
    _worker(plan_dict, local_rank, dist_url)


def run(plan: TransferPlan) -> Path:
    """Train and evaluate `plan` with the torchvision models; returns the result record's path."""
    if plan.state.get("status") == "finished" and not plan.force and plan.state.get("record"):
        return Path(plan.state["record"])
    in_env = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if plan.world_size > 1 and not in_env and plan.launcher == "local":
        import torch.multiprocessing as mp

        dist_url = plan.dist_url
        if dist_url == "auto":
            if plan.num_machines > 1:
                raise ValueError("--num-machines > 1 needs --dist-url tcp://HOST:PORT")
            dist_url = f"tcp://127.0.0.1:{_free_port()}"
        mp.start_processes(_spawned, args=(plan.to_dict(), dist_url), nprocs=plan.gpus, start_method="spawn")
        return plan.record_path
    path = _worker(plan.to_dict())
    return Path(path) if path else plan.record_path
