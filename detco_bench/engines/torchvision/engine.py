"""The torchvision engine: ``detco-bench transfer --engine torchvision`` (the default without detectron2).

``run(plan) -> Path`` trains and evaluates a `TransferPlan` with the models of `models` and writes
the result record (engine "torchvision") through `detco_bench.transfer.outcome.finish_run`. It
reads the same effective config as the Detectron2 engine, so ``--opts SOLVER.MAX_ITER 20
SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN "(256,)" ...`` mean the same for both.

Launch: one process (CPU or one GPU); ``--gpus N`` / ``--num-machines`` spawn N processes per
machine that join one process group at ``--dist-url`` (NCCL on GPUs, gloo on CPU), as detectron2's
``launch`` does; under torchrun or a Slurm task (submitit) the process joins the group described by
the environment (`distributed`). SOLVER.IMS_PER_BATCH is the total over all processes. Synchronized
BN (NORM "SyncBN" in the config) becomes torch's SyncBatchNorm when several GPU processes train; on
one process, or on CPU, it is plain BatchNorm (the plan already turns SyncBN into BN for
``--device cpu``).

Each process runs `_worker`: `setup.setup_job` (config, seed, data, model), `train.run.train`
(which also evaluates every TEST.EVAL_PERIOD iterations), `evaluate.run.evaluate`, then rank 0
writes the record with the final evaluation's metrics. With ``--eval-weights`` the model takes the
weights of a fine-tuned checkpoint of either engine (`weights_map.load_engine_weights`) and is
evaluated without training.

The output folder (``--out``) gets ``log.txt``, ``metrics.jsonl``, ``tb/`` (TensorBoard),
``model_<iter>.pth`` every SOLVER.CHECKPOINT_PERIOD iterations, ``model_final.pth``,
``last_checkpoint`` and ``inference/<dataset>/``. An interrupted job is resumed from
``last_checkpoint`` at exactly the saved iteration; a finished one is not rerun unless --force
(`detco_bench.transfer` decides, see `TransferPlan.resume`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from detco_bench.engines.torchvision import distributed
from detco_bench.engines.torchvision.evaluate.dataset import finite
from detco_bench.engines.torchvision.evaluate.run import evaluate
from detco_bench.engines.torchvision.setup import setup_job
from detco_bench.engines.torchvision.train.run import log_final_evaluation, train
from detco_bench.engines.torchvision.weights_map import load_engine_weights
from detco_bench.transfer.outcome import finish_run
from detco_bench.transfer.plan import TransferPlan


def _worker(plan_dict: dict[str, Any], local_rank: int | None = None, dist_url: str | None = None) -> str | None:
    """One process of the job: set up, train, evaluate, and (rank 0) write the record; returns the
    record's path on rank 0, None elsewhere."""
    plan = TransferPlan.from_dict(plan_dict)
    t0 = time.monotonic()
    group = distributed.join(plan, local_rank, dist_url)
    try:
        job = setup_job(plan, group)

        def evaluate_now() -> dict[str, float]:
            return finite(evaluate(job))

        if plan.eval_weights is not None:  # evaluation only: a fine-tuned model of either engine
            written_by = load_engine_weights(job.model, plan.eval_weights, plan.family, plan.config)
            job.log(f"evaluation only: {plan.eval_weights} ({written_by} names), no training", echo=True)
        else:
            train(job, evaluate_now)  # TEST.EVAL_PERIOD > 0: evaluations on the way, in metrics.jsonl
        metrics = evaluate_now()
        log_final_evaluation(job, metrics)
        if group.rank != 0:
            return None
        shown = [k for k in plan.metrics if k in metrics]
        job.log("metrics: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in shown or sorted(metrics)), echo=True)
        return str(finish_run(plan, metrics, time.monotonic() - t0))
    finally:
        distributed.leave(group)


def _spawned(local_rank: int, plan_dict: dict[str, Any], dist_url: str) -> None:
    """Entry point of a process spawned by `run` (``--gpus N``)."""
    options = plan_dict["options"]
    if options.get("device") == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Several CPU processes on one machine: share the cores (torchrun sets OMP_NUM_THREADS=1).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(options.get("gpus") or 1))))
    _worker(plan_dict, local_rank, dist_url)


def run(plan: TransferPlan) -> Path:
    """Train and evaluate `plan` with the torchvision models; returns the result record's path."""
    if plan.state.get("status") == "finished" and not plan.force and plan.state.get("record"):
        return Path(plan.state["record"])
    in_env = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if plan.world_size > 1 and not in_env and plan.launcher == "local":
        dist_url = plan.dist_url
        if dist_url == "auto":
            if plan.num_machines > 1:
                raise ValueError("--num-machines > 1 needs --dist-url tcp://HOST:PORT")
            dist_url = f"tcp://127.0.0.1:{distributed.free_port()}"
        mp.start_processes(_spawned, args=(plan.to_dict(), dist_url), nprocs=plan.gpus, start_method="spawn")
        return plan.record_path
    path = _worker(plan.to_dict())
    return Path(path) if path else plan.record_path
