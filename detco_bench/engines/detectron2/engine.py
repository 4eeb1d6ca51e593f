"""The Detectron2 engine's entry point: ``run(plan) -> Path`` (see the package docstring).

Each process runs `_worker`: register the components and the plan's datasets, build the CfgNode,
set up logging and seeds, train with `Trainer` (resuming from the output folder when the plan
says so), and on global rank 0 write the record from the final evaluation. With ``--eval-weights``
it evaluates a fine-tuned model of either engine instead of training.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from detco_bench.engines.detectron2.config import build_cfg
from detco_bench.engines.detectron2.datasets import register_datasets
from detco_bench.engines.detectron2.evaluators import flatten_results
from detco_bench.engines.detectron2.heads import register_components
from detco_bench.engines.detectron2.trainer import Trainer
from detco_bench.engines.torchvision.weights_map import checkpoint_engine, export_detectron2_checkpoint
from detco_bench.transfer.outcome import finish_run
from detco_bench.transfer.plan import TransferPlan

logger = logging.getLogger("detco_bench.detectron2")


def _setup(plan: TransferPlan, cfg: CfgNode) -> None:
    """Loggers into ``log.txt``, seeds, cudnn, ``detectron2_config.yaml``, the run's header lines."""
    rank = comm.get_rank()
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    setup_logger(out, distributed_rank=rank, name="fvcore")
    setup_logger(out, distributed_rank=rank, name="detectron2")
    setup_logger(out, distributed_rank=rank, name="detco_bench", abbrev_name="detco")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    if comm.is_main_process():
        with open(os.path.join(out, "detectron2_config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.dump())
    logger.info(
        "task %s, engine detectron2, world size %d, device %s",
        plan.task_label,
        comm.get_world_size(),
        cfg.MODEL.DEVICE,
    )
    logger.info("batch/lr rule: %s", plan.scaling.get("summary"))
    for a in plan.adaptations:
        logger.info("adapted %s: %r -> %r (%s)", a["key"], a["from"], a["to"], a["why"])
    if plan.opts:
        logger.info("--opts %s", " ".join(plan.opts))


def _worker(plan_dict: dict[str, Any]) -> str | None:
    """One process of the job (any rank): train, evaluate, and (rank 0) write the record."""
    plan = TransferPlan.from_dict(plan_dict)
    t0 = time.monotonic()
    register_components()
    register_datasets(plan)
    cfg = build_cfg(plan)
    _setup(plan, cfg)
    if plan.eval_weights is not None:
        results = _evaluate_only(plan, cfg)
    else:
        trainer = Trainer(cfg, keep_checkpoints=plan.options.keep_checkpoints)
        trainer.resume_or_load(resume=plan.resume)
        if trainer.start_iter:
            logger.info("resuming from iteration %d", trainer.start_iter)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)
    comm.synchronize()
    if not comm.is_main_process():
        return None
    if not results:
        raise RuntimeError("evaluation produced no results")
    metrics = flatten_results(results)
    logger.info("metrics: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in plan.metrics))
    return str(finish_run(plan, metrics, time.monotonic() - t0))


def _evaluate_only(plan: TransferPlan, cfg: CfgNode) -> Any:
    """``--eval-weights``: the fine-tuned model of either engine, evaluated without training. A
    torchvision-engine checkpoint is first written in Detectron2's names (`weights_map`)."""
    weights = str(plan.eval_weights)
    if checkpoint_engine(weights) != "detectron2":
        exported = Path(cfg.OUTPUT_DIR) / "eval_weights_detectron2.pth"
        if comm.is_main_process():
            export_detectron2_checkpoint(weights, exported, plan.family, plan.config)
        comm.synchronize()
        weights = str(exported)
    logger.info("evaluation only: %s, no training", plan.eval_weights)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).load(weights)
    return Trainer.test(cfg, model)


def _init_distributed_from_env(plan: TransferPlan) -> None:
    """Inside a Slurm task (submitit exported MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = plan.device == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", str(plan.gpus))))
    comm.synchronize()


def run(plan: TransferPlan) -> Path:
    """Train and evaluate `plan` with detectron2; returns the result record's path."""
    if plan.launcher == "slurm":
        _init_distributed_from_env(plan)
        path = _worker(plan.to_dict())
        return Path(path) if path else plan.record_path
    if plan.world_size > 1:
        launch(
            _worker,
            plan.gpus,
            num_machines=plan.num_machines,
            machine_rank=plan.machine_rank,
            dist_url=plan.dist_url,
            args=(plan.to_dict(),),
        )
        return plan.record_path
    path = _worker(plan.to_dict())
    return Path(path) if path else plan.record_path
