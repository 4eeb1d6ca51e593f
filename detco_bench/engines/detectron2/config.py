"""detectron2's CfgNode of a plan: its defaults, detco-bench's own keys, the plan's config."""

from __future__ import annotations

from detectron2.config import CfgNode, get_cfg

from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer_config import CUSTOM_KEYS


def add_detco_config(cfg: CfgNode) -> None:
    """detco-bench's own keys (`detco_bench.transfer_config.CUSTOM_KEYS`) with their defaults."""
    for key, value in CUSTOM_KEYS.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = getattr(node, part)
        if parts[-1] not in node:
            node[parts[-1]] = value


def build_cfg(plan: TransferPlan) -> CfgNode:
    """detectron2's CfgNode: its defaults, our keys, then the plan's effective config merged in
    (detectron2 checks every key and type). Frozen."""
    cfg = get_cfg()
    add_detco_config(cfg)
    cfg.merge_from_other_cfg(CfgNode(plan.config))
    cfg.freeze()
    return cfg
