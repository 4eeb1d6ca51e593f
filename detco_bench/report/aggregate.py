"""Aggregation: result records -> pandas frames -> groups averaged over seeds.

A group is one checkpoint (by sha256) on one task with one engine; its seeds are averaged. Each
checkpoint is a group of its own, so a bad checkpoint cannot hide behind a good one of the same
method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from detco_bench.records import ResultRecord
from detco_bench.report.taxonomy import method_label, method_sort_key, metric_sort_key, task_sort_key

RUN_COLUMNS = ["run_id", "group", "label", "method", "pretrain_epochs", "checkpoint_sha256",
               "checkpoint_path", "task", "engine", "seed", "metric", "value"]
PROVENANCE_COLUMNS = ["torch", "torchvision", "detectron2", "detco_bench", "git_commit", "config_hash",
                      "checkpoint_sha256", "device", "hostname", "wall_clock_s", "started_at",
                      "finished_at"]
SUMMARY_COLUMNS = ["group", "label", "method", "pretrain_epochs", "checkpoint_sha256", "checkpoint_path",
                   "task", "engine", "metric", "mean", "std", "n"]


def as_epochs(value: Any) -> int | None:
    """A pretrain_epochs cell (nullable Int64: NA / NaN / None when absent) as int or None."""
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) \
        else int(value)


def group_key(record: ResultRecord) -> str:
    ck = record.checkpoint
    return f"{ck.method}|{ck.pretrain_epochs}|{ck.identity}|{record.task}|{record.engine}"


def group_label(record: ResultRecord) -> str:
    ck = record.checkpoint
    label = method_label(ck.method, ck.pretrain_epochs)
    if ck.sha256:
        return f"{label} [{ck.sha256[:8]}]"
    if ck.path:
        return f"{label} [{Path(ck.path).name}]"
    return label


def runs_frame(records: Sequence[ResultRecord]) -> pd.DataFrame:
    """One row per (record, metric) of the given records (use successful ones)."""
    cols: dict[str, list] = {c: [] for c in RUN_COLUMNS}
    for r in records:
        ck = r.checkpoint
        key, label = group_key(r), group_label(r)
        for metric, value in r.metrics.items():
            cols["run_id"].append(r.run_id)
            cols["group"].append(key)
            cols["label"].append(label)
            cols["method"].append(ck.method)
            cols["pretrain_epochs"].append(ck.pretrain_epochs)
            cols["checkpoint_sha256"].append(ck.sha256)
            cols["checkpoint_path"].append(ck.path)
            cols["task"].append(r.task)
            cols["engine"].append(r.engine)
            cols["seed"].append(r.seed)
            cols["metric"].append(metric)
            cols["value"].append(float(value))
    df = pd.DataFrame(cols)
    df["pretrain_epochs"] = pd.array(cols["pretrain_epochs"], dtype="Int64")
    df["value"] = df["value"].astype(float)
    return df


def provenance_frame(records: Sequence[ResultRecord]) -> pd.DataFrame:
    """One row per record: identity, status and provenance (versions, commit, hashes, device...)."""
    rows = []
    for r in records:
        p = r.provenance
        v = p.get("versions", {})
        rows.append({
            "run_id": r.run_id, "group": group_key(r), "label": group_label(r), "task": r.task,
            "engine": r.engine, "method": r.checkpoint.method,
            "pretrain_epochs": r.checkpoint.pretrain_epochs, "seed": r.seed, "status": r.status,
            "torch": v.get("torch"), "torchvision": v.get("torchvision"),
            "detectron2": v.get("detectron2"), "detco_bench": v.get("detco_bench"),
            "git_commit": p.get("git_commit"), "config_hash": r.config_hash,
            "checkpoint_sha256": r.checkpoint.sha256, "device": p.get("device"),
            "hostname": p.get("hostname"), "wall_clock_s": p.get("wall_clock_s"),
            "started_at": p.get("started_at"), "finished_at": p.get("finished_at"),
            "record": str(r.source) if r.source else None,
        })
    df = pd.DataFrame(rows, columns=["run_id", "group", "label", "task", "engine", "method",
                                     "pretrain_epochs", "seed", "status", *PROVENANCE_COLUMNS, "record"])
    df["pretrain_epochs"] = df["pretrain_epochs"].astype("Int64")
    return df


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (group, metric): mean, sample std (ddof=1; NaN for n=1) and n over seeds, sorted
    by task, method, epochs, label and metric."""
    if runs.empty:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in SUMMARY_COLUMNS})
        return out.astype({"mean": float, "std": float, "n": int})
    stats = (
        runs.groupby(["group", "metric"], sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    meta = runs.drop_duplicates("group")[["group", "label", "method", "pretrain_epochs",
                                          "checkpoint_sha256", "checkpoint_path", "task", "engine"]]
    summary = stats.merge(meta, on="group", how="left")[SUMMARY_COLUMNS]
    ordered = sorted(
        meta.itertuples(index=False),
        key=lambda m: (task_sort_key(m.task), method_sort_key(m.method), as_epochs(m.pretrain_epochs) or 0,
                       m.label, m.engine, m.group),
    )
    group_rank = {m.group: i for i, m in enumerate(ordered)}
    metric_rank = {m: i for i, m in enumerate(sorted(summary["metric"].unique(), key=metric_sort_key))}
    summary = summary.assign(_g=summary["group"].map(group_rank), _m=summary["metric"].map(metric_rank))
    return summary.sort_values(["_g", "_m"], kind="stable").drop(columns=["_g", "_m"]).reset_index(drop=True)


def aggregate_provenance(prov: pd.DataFrame) -> pd.DataFrame:
    """Per group: the distinct provenance values (joined by ';') and the mean wall-clock."""
    if prov.empty:
        return pd.DataFrame(columns=["group"])

    def distinct(s: pd.Series) -> str:
        return ";".join(sorted({str(x) for x in s if x is not None and not pd.isna(x)}))

    cols = ["torch", "torchvision", "detectron2", "detco_bench", "git_commit", "config_hash",
            "device", "hostname"]
    out = prov.groupby("group", sort=False)[cols].agg(distinct)
    out["wall_clock_s_mean"] = prov.groupby("group", sort=False)["wall_clock_s"].mean()
    return out.reset_index()


@dataclass
class Group:
    """One checkpoint on one task with one engine, aggregated over seeds."""

    key: str
    label: str
    method: str
    epochs: int | None
    sha256: str | None
    task: str
    engine: str
    n: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)


def groups_from_summary(summary: pd.DataFrame) -> list[Group]:
    """The summary's groups in its order, each with its per-metric mean, std and n."""
    groups: dict[str, Group] = {}
    for row in summary.itertuples(index=False):
        g = groups.get(row.group)
        if g is None:
            g = groups[row.group] = Group(
                key=row.group, label=row.label, method=row.method, epochs=as_epochs(row.pretrain_epochs),
                sha256=row.checkpoint_sha256, task=row.task, engine=row.engine,
            )
        g.mean[row.metric] = float(row.mean)
        g.std[row.metric] = float(row.std)
        g.count[row.metric] = int(row.n)
        g.n = max(g.n, int(row.n))
    return list(groups.values())
