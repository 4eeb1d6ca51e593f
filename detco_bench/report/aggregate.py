"""Aggregation: result records -> pandas frames -> groups averaged over distinct seeds.

A group (`grouping`) is one checkpoint on one task with one engine and one settings hash; its
distinct seeds are averaged (reruns of a seed: the latest counts). Each checkpoint is a group
of its own, so a bad checkpoint cannot hide behind a good one of the same method. A NaN metric
(an evaluator without predictions) is never averaged away: the group's mean and std of that
metric are NaN and ``nan`` counts the seeds that had it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from detco_bench.records import ResultRecord
from detco_bench.report.grouping import Grouping, group_records, protocol_status
from detco_bench.report.taxonomy import method_sort_key, metric_sort_key, task_sort_key

RUN_COLUMNS = ["run_id", "group", "label", "method", "pretrain_epochs", "checkpoint_sha256",
               "checkpoint_path", "task", "engine", "settings_hash", "comparison_hash", "baseline", "protocol",
               "seed", "superseded", "metric", "value"]
PROVENANCE_COLUMNS = ["torch", "torchvision", "detectron2", "detco_bench", "git_commit", "config_hash",
                      "checkpoint_sha256", "device", "hostname", "wall_clock_s", "started_at",
                      "finished_at"]
_META_COLUMNS = ["group", "label", "method", "pretrain_epochs", "checkpoint_sha256", "checkpoint_path",
                 "task", "engine", "settings_hash", "comparison_hash", "baseline", "protocol"]
SUMMARY_COLUMNS = [*_META_COLUMNS, "metric", "mean", "std", "n", "nan", "reruns_ignored"]


def as_epochs(value: Any) -> int | None:
    """A pretrain_epochs cell (nullable Int64: NA / NaN / None when absent) as int or None."""
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) \
        else int(value)


def runs_frame(records: Sequence[ResultRecord], grouping: Grouping | None = None) -> pd.DataFrame:
    """One row per (record, metric) of the given records (use successful ones). `superseded`
    marks the rows of reruns that a later run of the same seed in the same group replaces."""
    grouping = grouping if grouping is not None else group_records(records)
    cols: dict[str, list] = {c: [] for c in RUN_COLUMNS}
    for r in records:
        ck = r.checkpoint
        key = grouping.key[r.run_id]
        n = len(r.metrics)
        row = {"run_id": r.run_id, "group": key, "label": grouping.label[key], "method": ck.method,
               "pretrain_epochs": ck.pretrain_epochs, "checkpoint_sha256": ck.sha256,
               "checkpoint_path": ck.path, "task": r.task, "engine": r.engine,
               "settings_hash": grouping.settings[key], "comparison_hash": grouping.comparison[key],
               "baseline": grouping.baseline[key], "protocol": protocol_status(r), "seed": r.seed,
               "superseded": r.run_id in grouping.superseded}
        for c, v in row.items():
            cols[c].extend([v] * n)
        cols["metric"].extend(r.metrics)
        cols["value"].extend(float(v) for v in r.metrics.values())
    df = pd.DataFrame(cols)
    df["pretrain_epochs"] = pd.array(cols["pretrain_epochs"], dtype="Int64")
    df["value"] = df["value"].astype(float)
    df["superseded"] = df["superseded"].astype(bool)
    df["baseline"] = df["baseline"].astype(bool)
    return df


def provenance_frame(records: Sequence[ResultRecord], grouping: Grouping | None = None) -> pd.DataFrame:
    """One row per record: identity, status, settings, protocol and provenance (versions, commit,
    hashes, device...); `superseded_by` names the later rerun of the same seed that replaces it."""
    grouping = grouping if grouping is not None else group_records(records)
    rows = []
    for r in records:
        p = r.provenance
        v = p.get("versions", {})
        key = grouping.key[r.run_id]
        rows.append({
            "run_id": r.run_id, "group": key, "label": grouping.label[key], "task": r.task,
            "engine": r.engine, "method": r.checkpoint.method,
            "pretrain_epochs": r.checkpoint.pretrain_epochs, "seed": r.seed, "status": r.status,
            "settings_hash": grouping.settings[key], "protocol": protocol_status(r),
            "superseded_by": grouping.superseded.get(r.run_id),
            "torch": v.get("torch"), "torchvision": v.get("torchvision"),
            "detectron2": v.get("detectron2"), "detco_bench": v.get("detco_bench"),
            "git_commit": p.get("git_commit"), "config_hash": r.config_hash,
            "checkpoint_sha256": r.checkpoint.sha256, "device": p.get("device"),
            "hostname": p.get("hostname"), "wall_clock_s": p.get("wall_clock_s"),
            "started_at": p.get("started_at"), "finished_at": p.get("finished_at"),
            "record": str(r.source) if r.source else None,
        })
    df = pd.DataFrame(rows, columns=["run_id", "group", "label", "task", "engine", "method",
                                     "pretrain_epochs", "seed", "status", "settings_hash", "protocol",
                                     "superseded_by", *PROVENANCE_COLUMNS, "record"])
    df["pretrain_epochs"] = df["pretrain_epochs"].astype("Int64")
    return df


def kept_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows that count: reruns replaced by a later run of the same seed dropped."""
    return runs[~runs["superseded"]] if "superseded" in runs.columns else runs


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (group, metric) over distinct seeds: mean, sample std (ddof=1; NaN for n=1), n (seeds
    with the metric), nan (seeds where it is NaN; mean and std are then NaN) and the number of
    reruns ignored; sorted by task, method, epochs, label and metric."""
    if runs.empty:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in SUMMARY_COLUMNS})
        return out.astype({"mean": float, "std": float, "n": int, "nan": int, "reruns_ignored": int})
    ignored = runs[runs["superseded"]].drop_duplicates("run_id").groupby("group").size()
    runs = kept_runs(runs)
    stats = (
        runs.groupby(["group", "metric"], sort=False)["value"]
        .agg(mean="mean", std="std", n="size", finite="count")
        .reset_index()
    )
    stats["nan"] = stats["n"] - stats.pop("finite")
    # pandas skips NaN in means; a seed without a number must not vanish from the average.
    stats.loc[stats["nan"] > 0, ["mean", "std"]] = math.nan
    stats["reruns_ignored"] = stats["group"].map(ignored).fillna(0).astype(int)
    meta = runs.drop_duplicates("group")[_META_COLUMNS]
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
    """One checkpoint on one task with one engine and one settings hash, over distinct seeds.

    mean / std / count / nan: per metric (count: seeds with the metric, nan: of them NaN);
    values: per metric, the kept seeds' values (for significance tests; empty when the group was
    made from a summary alone); protocol: 'exact' / 'adapted' / 'unknown'; comparison_hash: the
    settings without the checkpoint's own labels (a delta needs equal ones); baseline: run as an
    in-harness baseline (``run --baselines``)."""

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
    nan: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    settings_hash: str = ""
    protocol: str = "unknown"
    reruns_ignored: int = 0
    comparison_hash: str = ""
    baseline: bool = False


def groups_from_summary(summary: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[Group]:
    """The summary's groups in its order, each with its per-metric mean, std and n; with `runs`
    (the frame the summary was aggregated from) also the per-seed values."""
    groups: dict[str, Group] = {}
    for row in summary.itertuples(index=False):
        g = groups.get(row.group)
        if g is None:
            g = groups[row.group] = Group(
                key=row.group, label=row.label, method=row.method, epochs=as_epochs(row.pretrain_epochs),
                sha256=row.checkpoint_sha256, task=row.task, engine=row.engine,
                settings_hash=row.settings_hash, protocol=row.protocol,
                reruns_ignored=int(row.reruns_ignored),
                # a summary written before these columns: every group comparable, none tagged
                comparison_hash=str(getattr(row, "comparison_hash", "")),
                baseline=bool(getattr(row, "baseline", False)),
            )
        g.mean[row.metric] = float(row.mean)
        g.std[row.metric] = float(row.std)
        g.count[row.metric] = int(row.n)
        g.nan[row.metric] = int(row.nan)
        g.n = max(g.n, int(row.n))
    if runs is not None and len(runs):
        kept = kept_runs(runs)
        for (key, metric), values in kept.groupby(["group", "metric"], sort=False)["value"]:
            if key in groups:
                groups[key].values[metric] = values.tolist()
    return list(groups.values())
