"""How a run differs from the published protocol.

The protocol of a task is its config as published: the YAML chain run on 8 GPUs with
synchronized BN, on the task's real dataset. A run is ``exact`` when its effective config equals
that on every key that changes what is measured, and ``adapted`` otherwise; every difference is
listed with its reason. The result record carries this (``config.DETCO_BENCH.protocol``), the
report shows it, and ``report --check --reference paper`` does not compare adapted runs with the
paper's numbers unless asked to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detco_bench.transfer.adapt import REFERENCE_WORLD_SIZE
from detco_bench.transfer_config import SYNC_BN_NAMES, flatten, get_key

#: Keys that never change what a run measures: where things go, identity, throughput.
BOOKKEEPING_KEYS = ("MODEL.WEIGHTS", "OUTPUT_DIR", "SEED", "MODEL.DEVICE", "DATALOADER.", "SOLVER.CHECKPOINT_PERIOD",
                    "TEST.EVAL_PERIOD", "VIS_PERIOD", "CUDNN_BENCHMARK")


def images_per_bn_group(cfg: Mapping[str, Any], world_size: int) -> int:
    """How many images one BatchNorm normalises over: the whole batch under synchronized BN,
    one process's images under plain BN (on CPU, or detectron2's SyncBN at world size 1)."""
    per_process = int(get_key(cfg, "SOLVER.IMS_PER_BATCH")) // max(world_size, 1)
    norm = str(get_key(cfg, "MODEL.RESNETS.NORM", "BN"))
    synced = norm in SYNC_BN_NAMES and world_size > 1
    return per_process * world_size if synced else per_process


def batch_summary(cfg: Mapping[str, Any], world_size: int, scaling_rule: str) -> dict[str, Any]:
    """The numbers that decide a schedule: processes, images per GPU and per BN group, lr, iterations."""
    total = int(get_key(cfg, "SOLVER.IMS_PER_BATCH"))
    return {
        "world_size": world_size,
        "ims_per_gpu": total // max(world_size, 1),
        "total_batch": total,
        "ims_per_bn_group": images_per_bn_group(cfg, world_size),
        "base_lr": float(get_key(cfg, "SOLVER.BASE_LR")),
        "max_iter": int(get_key(cfg, "SOLVER.MAX_ITER")),
        "scaling_rule": scaling_rule,
    }


def _why(key: str, adaptations: Sequence[Mapping[str, Any]], scaling: Mapping[str, Any],
         opts_keys: set[str]) -> str:
    if key in opts_keys:
        return "--opts"
    reasons = [a["why"] for a in adaptations if a["key"] == key]
    if reasons:
        return reasons[-1]
    if key in scaling.get("changes", {}):
        return f"{scaling['rule']} scaling rule for {scaling['world_size']} process(es)"
    return "adapted"


def protocol_fidelity(protocol_cfg: Mapping[str, Any], run_cfg: Mapping[str, Any], *, world_size: int,
                      scaling: Mapping[str, Any], adaptations: Sequence[Mapping[str, Any]],
                      opts_keys: set[str], variant: str | None, subset: str | None) -> dict[str, Any]:
    """``{"protocol": "exact"|"adapted", "differences": [...], **batch_summary}`` of a run.

    protocol_cfg: the task's published config (no adaptation); run_cfg: the run's effective
    config; variant: the task label's variant (``synthetic``, ``custom``) when not the real data;
    subset: the semi-supervised subset, whose training set is part of the task's protocol.
    """
    published = flatten(protocol_cfg)
    actual = flatten(run_cfg)
    differences: list[str] = []
    if variant:
        differences.append(f"data: {variant} dataset, not the task's own")
    for key in sorted(set(published) | set(actual)):
        if key.startswith(BOOKKEEPING_KEYS) or (variant and key.startswith("DATASETS.")):
            continue
        if subset and key == "DATASETS.TRAIN":
            continue
        before, after = published.get(key), actual.get(key)
        if before != after:
            differences.append(f"{key}: {before!r} -> {after!r} ({_why(key, adaptations, scaling, opts_keys)})")
    summary = batch_summary(run_cfg, world_size, str(scaling.get("rule")))
    protocol_group = images_per_bn_group(protocol_cfg, REFERENCE_WORLD_SIZE)
    if summary["ims_per_bn_group"] != protocol_group:
        differences.append(f"BN normalises over {summary['ims_per_bn_group']} image(s) per group, the protocol "
                           f"over {protocol_group} (synchronized BN on {REFERENCE_WORLD_SIZE} GPUs)")
    return {"protocol": "adapted" if differences else "exact", "differences": differences, **summary}


def comment_block(fidelity: Mapping[str, Any]) -> str:
    """The ``--print-config`` header: is this the published protocol, and if not, how it differs."""
    if fidelity["protocol"] == "exact":
        return "# protocol: exact (the published config of this task)\n"
    lines = ["# protocol: ADAPTED to this run; differences from the published 8-GPU config:"]
    lines += [f"#   {d}" for d in fidelity["differences"]]
    lines.append("# (`detco-bench transfer --task TASK --protocol` prints the published config)")
    return "\n".join(lines) + "\n"
