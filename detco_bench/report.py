"""The report: result records -> pandas aggregation -> paper-style tables, --check, plots, files.

Pipeline::

    scan_records(paths)            records (status success are aggregated), skipped (path, reason)
    runs_frame(records)            one row per (record, metric)
    aggregate(runs)                per (checkpoint, task, engine, metric): mean, std (ddof=1), n
    build_tables(...)              paper-style tables (Tables 3-8): reference rows, measured rows,
                                   delta rows vs the supervised baseline and MoCo v2
    run_check(...)                 measured mean >= reference - k * spread, per metric
    render_* / write_report(...)   terminal (rich), Markdown, CSV, LaTeX (booktabs), HTML, PNG

A group is one checkpoint (by sha256) on one task with one engine; its seeds are averaged. Each
checkpoint is checked on its own, so a bad checkpoint cannot hide behind a good one of the same
method.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from detco_bench.records import ResultRecord, default_results_dir, scan_records
from detco_bench.reference import empty_reference, load_reference
from pretrain.atomic import atomic_write_bytes, atomic_write_text

METHOD_ORDER = ("random", "supervised", "mocov2", "detco", "detco_aa")
METHOD_LABELS = {
    "random": "Random init",
    "supervised": "Supervised",
    "mocov2": "MoCo v2",
    "detco": "DetCo",
    "detco_aa": "DetCo+AA",
}
BASELINES = ("supervised", "mocov2")
# The MoCo / DetCo tables mark gaps of at least +0.5 point in green; we also mark drops of at
# least 0.5 point in red (everything in between is grey).
HIGHLIGHT_DELTA = 0.5
FORMATS = ("terminal", "md", "csv", "latex", "html", "png")
FORMAT_ALIASES = {"markdown": "md", "tex": "latex", "rich": "terminal", "plots": "png"}
MISSING = "-"
TERMINAL_ROW_LIMIT = 60

_BOX = ("bbox/AP", "bbox/AP50", "bbox/AP75")
_MASK = ("segm/AP", "segm/AP50", "segm/AP75")


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    tasks: tuple[str, ...]
    metrics: tuple[str, ...]
    optional_metrics: tuple[str, ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family("coco_c4", "COCO Mask R-CNN R50-C4", ("coco_c4_12k", "coco_c4_1x", "coco_c4_2x"), _BOX + _MASK),
    Family("coco_fpn", "COCO Mask R-CNN R50-FPN", ("coco_fpn_12k", "coco_fpn_1x", "coco_fpn_2x"),
           _BOX + _MASK),
    Family("retinanet", "COCO RetinaNet R50-FPN", ("retinanet_12k", "retinanet_1x", "retinanet_2x"), _BOX),
    Family("keypoint", "COCO Keypoint R-CNN R50-FPN 2x", ("keypoint_fpn_2x",),
           ("keypoints/AP", "keypoints/AP50", "keypoints/AP75")),
    Family("voc", "PASCAL VOC07+12 Faster R-CNN R50-C4 (24k, VOC07 test)", ("voc_c4_24k",), _BOX),
    Family("cityscapes", "Cityscapes (instance: Mask R-CNN R50-FPN; semantic: FCN)",
           ("cityscapes_inst_fpn", "cityscapes_sem"), ("segm/AP", "segm/AP50", "sem_seg/mIoU")),
    Family("linear", "ImageNet-1k linear classification", ("linear_protocol",), ("top1", "top5"),
           ("knn_top1", "knn_top5")),
    Family("voc07_svm", "VOC07 SVM", ("voc07_svm",), ("mAP",)),
    Family("densepose", "COCO DensePose", ("densepose_fpn",),
           ("densepose/AP", "densepose/AP50", "densepose/AP75")),
    Family("semi", "Semi-supervised COCO (12k iterations on a random subset)",
           ("coco_fpn_12k@1%", "coco_fpn_12k@10%", "retinanet_12k@1%", "retinanet_12k@10%"), _BOX),
)
OTHER_FAMILY_KEY = "other"
_TASK_FAMILY = {t: f for f in FAMILIES for t in f.tasks}
TASK_ORDER = tuple(t for f in FAMILIES for t in f.tasks)
_METRIC_ORDER = tuple(dict.fromkeys(m for f in FAMILIES for m in f.metrics + f.optional_metrics))
HEADLINE_METRICS = {"cityscapes_inst_fpn": "segm/AP", "cityscapes_sem": "sem_seg/mIoU",
                    "keypoint_fpn_2x": "keypoints/AP", "linear_protocol": "top1", "voc07_svm": "mAP",
                    "densepose_fpn": "densepose/AP"}


def family_of(task: str) -> Family | None:
    fam = _TASK_FAMILY.get(task)
    if fam is None and "@" in task:
        return next(f for f in FAMILIES if f.key == "semi")
    return fam


def headline_metric(task: str) -> str:
    return HEADLINE_METRICS.get(task.partition("@")[0], "bbox/AP")


def task_sort_key(task: str) -> tuple:
    fam = family_of(task)
    fam_idx = FAMILIES.index(fam) if fam else len(FAMILIES)
    idx = fam.tasks.index(task) if fam and task in fam.tasks else len(TASK_ORDER)
    return (fam_idx, idx, task)


def method_sort_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def metric_sort_key(metric: str) -> tuple:
    return (_METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER), metric)


def method_label(method: str, epochs: int | None) -> str:
    label = METHOD_LABELS.get(method, method)
    return f"{label} {epochs}ep" if epochs is not None else label


def _epochs(value: Any) -> int | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) \
        else int(value)


# --------------------------------------------------------------------------- aggregation

RUN_COLUMNS = ["run_id", "group", "label", "method", "pretrain_epochs", "checkpoint_sha256",
               "checkpoint_path", "task", "engine", "seed", "metric", "value"]
PROVENANCE_COLUMNS = ["torch", "torchvision", "detectron2", "detco_bench", "git_commit", "config_hash",
                      "checkpoint_sha256", "device", "hostname", "wall_clock_s", "started_at",
                      "finished_at"]


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


SUMMARY_COLUMNS = ["group", "label", "method", "pretrain_epochs", "checkpoint_sha256", "checkpoint_path",
                   "task", "engine", "metric", "mean", "std", "n"]


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
        key=lambda m: (task_sort_key(m.task), method_sort_key(m.method), _epochs(m.pretrain_epochs) or 0,
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
    groups: dict[str, Group] = {}
    for row in summary.itertuples(index=False):
        g = groups.get(row.group)
        if g is None:
            g = groups[row.group] = Group(
                key=row.group, label=row.label, method=row.method, epochs=_epochs(row.pretrain_epochs),
                sha256=row.checkpoint_sha256, task=row.task, engine=row.engine,
            )
        g.mean[row.metric] = float(row.mean)
        g.std[row.metric] = float(row.std)
        g.count[row.metric] = int(row.n)
        g.n = max(g.n, int(row.n))
    return list(groups.values())


# --------------------------------------------------------------------------- reference lookup


@dataclass
class RefEntry:
    """One method row of a reference table for one task and engine."""

    method: str
    epochs: int | None
    task: str
    engine: str
    values: dict[str, float] = field(default_factory=dict)
    spreads: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return method_label(self.method, self.epochs)


def reference_entries(reference: pd.DataFrame) -> dict[str, list[RefEntry]]:
    """task -> reference rows (one per method / epochs / engine), in table order."""
    by_key: dict[tuple, RefEntry] = {}
    for row in reference.itertuples(index=False):
        ep = _epochs(row.pretrain_epochs)
        key = (row.task, row.method, ep, row.engine)
        e = by_key.get(key)
        if e is None:
            e = by_key[key] = RefEntry(row.method, ep, row.task, row.engine)
        e.values[row.metric] = float(row.value)
        e.spreads[row.metric] = float(row.spread)
    out: dict[str, list[RefEntry]] = {}
    for e in sorted(by_key.values(), key=lambda e: (method_sort_key(e.method), e.epochs or 0, e.engine)):
        out.setdefault(e.task, []).append(e)
    return out


def match_reference(
    entries: Sequence[RefEntry], method: str, epochs: int | None
) -> tuple[list[RefEntry], str | None]:
    """Reference rows for a checkpoint (all engines). Returns (rows, reason-if-ambiguous).

    Empty reference epochs match any checkpoint; a checkpoint without pretrain_epochs matches
    when the reference has a single epochs value for the method, else it is ambiguous."""
    rows = [e for e in entries if e.method == method]
    if epochs is None:
        eps = sorted({e.epochs for e in rows if e.epochs is not None})
        if len(eps) > 1:
            return [], ("record has no pretrain_epochs; reference has "
                        + ", ".join(str(x) for x in eps))
        return rows, None
    return [e for e in rows if e.epochs is None or e.epochs == epochs], None


# --------------------------------------------------------------------------- tables


@dataclass
class TableRow:
    kind: str  # "reference" | "measured" | "delta"
    task: str
    label: str
    engine: str
    n: int | None
    values: dict[str, float]
    stds: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None  # delta rows: the label of the row subtracted


@dataclass
class ReportTable:
    key: str
    title: str
    metrics: list[str]
    rows: list[TableRow]

    def to_frame(self) -> pd.DataFrame:
        """The table as display strings (what Markdown / HTML / LaTeX show)."""
        data = [[row.task, row_label(row), row.engine, "" if row.n is None else str(row.n),
                 *(format_cell(row, m) for m in self.metrics)] for row in self.rows]
        return pd.DataFrame(data, columns=["task", "row", "engine", "n", *self.metrics])


def row_label(row: TableRow, delta: str = "Δ") -> str:
    if row.kind == "delta":
        return f"{delta} vs {row.baseline}"
    return row.label


def format_cell(row: TableRow, metric: str, pm: str = "±") -> str:
    value = row.values.get(metric)
    if value is None or math.isnan(value):
        return MISSING
    if row.kind == "delta":
        return f"{value:+.1f}"
    text = f"{value:.1f}"
    std = row.stds.get(metric)
    if row.kind == "measured" and std is not None and not math.isnan(std):
        text += f" {pm} {std:.2f}"
    return text


def delta_direction(value: float | None) -> str:
    """'up' (>= +0.5, green), 'down' (<= -0.5, red) or 'flat' (grey)."""
    if value is None or math.isnan(value):
        return "flat"
    if value >= HIGHLIGHT_DELTA - 1e-9:
        return "up"
    if value <= -HIGHLIGHT_DELTA + 1e-9:
        return "down"
    return "flat"


def pick_baseline(
    method: str, task: str, engine: str, groups: Sequence[Group], refs: dict[str, list[RefEntry]],
    reference_name: str, epochs: int | None = None,
) -> tuple[str, dict[str, float], str | None] | None:
    """The row that deltas are taken against: a measured `method` group on the same task and
    engine (most seeds wins), else the reference's `method` row for that task and engine.
    Returns (label, values, group key or None)."""
    measured = [g for g in groups if g.method == method and g.task == task and g.engine == engine]
    if measured:
        best = sorted(measured, key=lambda g: (-g.n, g.label))[0]
        return best.label, best.mean, best.key
    candidates = [e for e in refs.get(task, []) if e.method == method and e.engine == engine]
    if candidates:
        # Same epochs as the row being compared if the reference has them, else its standard row
        # (the paper default of 200 epochs; 90 for supervised).
        best = sorted(candidates, key=lambda e: (e.epochs != epochs, e.epochs not in (None, 90, 200),
                                                 e.epochs or 0))[0]
        return f"{best.label} ({reference_name})", best.values, None
    return None


def build_tables(
    groups: Sequence[Group], reference: pd.DataFrame, reference_name: str = "paper"
) -> list[ReportTable]:
    """Paper-style tables for every family with measured results: per task the reference rows,
    then each measured checkpoint followed by its deltas vs Supervised and MoCo v2."""
    refs = reference_entries(reference)
    by_task: dict[str, list[Group]] = {}
    for g in groups:
        by_task.setdefault(g.task, []).append(g)
    families: dict[str, tuple[Family | None, list[str]]] = {}
    for task in sorted(by_task, key=task_sort_key):
        fam = family_of(task)
        key = fam.key if fam else OTHER_FAMILY_KEY
        families.setdefault(key, (fam, []))[1].append(task)

    tables = []
    for key, (fam, tasks) in families.items():
        measured_metrics = {m for t in tasks for g in by_task[t] for m in g.mean}
        if fam is not None:
            metrics = list(fam.metrics) + [m for m in fam.optional_metrics if m in measured_metrics]
            title = fam.title
        else:
            metrics = sorted(measured_metrics, key=metric_sort_key)
            title = "Other tasks"
        rows: list[TableRow] = []
        for task in tasks:
            for e in refs.get(task, []):
                if any(m in e.values for m in metrics):
                    rows.append(TableRow("reference", task, f"{e.label} ({reference_name})", e.engine,
                                         None, dict(e.values)))
            task_groups = sorted(by_task[task], key=lambda g: (method_sort_key(g.method), g.epochs or 0,
                                                               g.label, g.engine))
            for g in task_groups:
                rows.append(TableRow("measured", task, g.label, g.engine, g.n, dict(g.mean), dict(g.std)))
                for base_method in BASELINES:
                    if base_method == "mocov2" and g.method in ("random", "supervised"):
                        continue  # the paper compares pretraining methods with MoCo v2 only
                    base = pick_baseline(base_method, task, g.engine, groups, refs, reference_name,
                                         g.epochs)
                    if base is None or base[2] == g.key:
                        continue
                    base_label, base_values, _ = base
                    deltas = {m: g.mean[m] - base_values[m] for m in metrics
                              if m in g.mean and m in base_values}
                    if deltas:
                        rows.append(TableRow("delta", task, g.label, g.engine, None, deltas,
                                             baseline=base_label))
        tables.append(ReportTable(key, title, metrics, rows))
    return tables


# --------------------------------------------------------------------------- --check

CHECK_COLUMNS = ["task", "checkpoint", "method", "pretrain_epochs", "engine", "metric", "n", "mean", "std",
                 "reference", "spread", "threshold", "delta", "status", "note"]
STATUS_PASS, STATUS_FAIL = "pass", "FAIL"
STATUS_NOT_COMPARABLE, STATUS_AMBIGUOUS, STATUS_MISSING = "not comparable", "ambiguous", "missing"


@dataclass
class CheckResult:
    table: pd.DataFrame
    reference_name: str
    k: float

    def count(self, status: str) -> int:
        return int((self.table["status"] == status).sum()) if len(self.table) else 0

    @property
    def failed(self) -> bool:
        return self.count(STATUS_FAIL) > 0

    @property
    def compared(self) -> int:
        return self.count(STATUS_PASS) + self.count(STATUS_FAIL)

    def summary_line(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in (STATUS_PASS, STATUS_FAIL, STATUS_NOT_COMPARABLE,
                                                  STATUS_AMBIGUOUS, STATUS_MISSING)]
        return f"check (reference={self.reference_name}, k={self.k:g}): " + ", ".join(parts)


def run_check(groups: Sequence[Group], reference: pd.DataFrame, k: float = 2.0,
              reference_name: str = "paper") -> CheckResult:
    """Compare every measured metric that has a reference: pass iff mean >= value - k * spread.

    Groups whose engine differs from every matching reference row are 'not comparable' (neither
    pass nor fail). Reference metrics the group did not measure are listed as 'missing' (not a
    failure). A checkpoint without pretrain_epochs against several reference epochs is
    'ambiguous'."""
    refs = reference_entries(reference)
    rows = []
    for g in groups:
        candidates = [e for e in refs.get(g.task, []) if e.method == g.method]
        if not candidates:
            continue
        base = {"task": g.task, "checkpoint": g.label, "method": g.method, "pretrain_epochs": g.epochs,
                "engine": g.engine}
        same_engine = [e for e in candidates if e.engine == g.engine]
        if not same_engine:
            engines = ", ".join(sorted({e.engine for e in candidates}))
            shown, _ = match_reference(candidates, g.method, g.epochs)  # value shown if unambiguous
            ref_metrics = {m for e in candidates for m in e.values}
            for metric in sorted(ref_metrics & set(g.mean), key=metric_sort_key):
                ref_e = next((e for e in shown if metric in e.values), None)
                rows.append({**base, "metric": metric, "n": g.count[metric], "mean": g.mean[metric],
                             "std": g.std[metric], "reference": ref_e.values[metric] if ref_e else None,
                             "spread": ref_e.spreads[metric] if ref_e else None,
                             "status": STATUS_NOT_COMPARABLE, "note": f"reference engine: {engines}"})
            continue
        entries, ambiguous = match_reference(same_engine, g.method, g.epochs)
        if ambiguous:
            ref_metrics = {m for e in same_engine for m in e.values}
            for metric in sorted(ref_metrics & set(g.mean), key=metric_sort_key):
                rows.append({**base, "metric": metric, "n": g.count[metric], "mean": g.mean[metric],
                             "std": g.std[metric], "status": STATUS_AMBIGUOUS, "note": ambiguous})
            continue
        if not entries:
            continue  # the reference has this method only for other pretraining epochs
        # Several rows for the same engine only differ by epochs when the record has epochs and
        # the reference has an epoch-less row too: the exact epochs win.
        entry = sorted(entries, key=lambda e: e.epochs is None)[0]
        for metric in sorted(set(entry.values) | set(g.mean), key=metric_sort_key):
            if metric not in entry.values:
                continue
            ref_value, spread = entry.values[metric], entry.spreads[metric]
            threshold = ref_value - k * spread
            row = {**base, "metric": metric, "reference": ref_value, "spread": spread,
                   "threshold": threshold}
            if metric not in g.mean or math.isnan(g.mean[metric]):
                rows.append({**row, "n": 0, "status": STATUS_MISSING,
                             "note": "reference metric not in the records"})
                continue
            mean = g.mean[metric]
            ok = mean >= threshold - 1e-6
            rows.append({**row, "n": g.count[metric], "mean": mean, "std": g.std[metric],
                         "delta": mean - ref_value, "status": STATUS_PASS if ok else STATUS_FAIL,
                         "note": "" if ok else f"below {ref_value:g} - {k:g} x {spread:g}"})
    table = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    table["pretrain_epochs"] = table["pretrain_epochs"].astype("Int64")
    table["n"] = table["n"].astype("Int64")
    for col in ("mean", "std", "reference", "spread", "threshold", "delta"):
        table[col] = table[col].astype(float)
    table["note"] = table["note"].fillna("")
    return CheckResult(table, reference_name, k)


def check_display_frame(check: CheckResult) -> pd.DataFrame:
    """The check table as display strings."""
    def num(x: Any, fmt: str) -> str:
        return MISSING if x is None or pd.isna(x) else format(x, fmt)

    t = check.table
    return pd.DataFrame({
        "task": t["task"], "checkpoint": t["checkpoint"], "engine": t["engine"], "metric": t["metric"],
        "n": [num(x, "d") for x in t["n"]], "mean": [num(x, ".2f") for x in t["mean"]],
        "reference": [num(x, ".1f") for x in t["reference"]],
        "threshold": [num(x, ".2f") for x in t["threshold"]],
        "Δ": [num(x, "+.2f") for x in t["delta"]], "status": t["status"], "note": t["note"],
    })


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    records: list[ResultRecord]
    excluded: list[ResultRecord]
    skipped: list[tuple[Path, str]]
    runs: pd.DataFrame
    summary: pd.DataFrame
    groups: list[Group]
    reference: pd.DataFrame
    reference_name: str
    tables: list[ReportTable]
    check: CheckResult | None = None
    provenance: pd.DataFrame | None = None
    paths: list[Path] = field(default_factory=list)


def build_report(
    paths: Iterable[str | os.PathLike] | None = None,
    *,
    reference: str | os.PathLike | None = "paper",
    check: bool = False,
    k: float = 2.0,
    provenance: bool = False,
) -> Report:
    """Scan, validate, aggregate, tabulate and (optionally) check. Never raises for bad records;
    raises UserError for a bad reference."""
    paths = list(paths) if paths is not None else [default_results_dir()]
    all_records, skipped = scan_records(paths)
    records = [r for r in all_records if r.status == "success"]
    excluded = [r for r in all_records if r.status != "success"]
    if reference is None:
        ref_df, ref_name = empty_reference(), "none"
    else:
        ref_df = load_reference(reference)
        ref_name = ref_df.attrs.get("name", str(reference))
    runs = runs_frame(records)
    summary = aggregate(runs)
    prov = None
    if provenance:
        prov = provenance_frame(records)
        summary = summary.merge(aggregate_provenance(prov), on="group", how="left")
    groups = groups_from_summary(summary)
    tables = build_tables(groups, ref_df, ref_name)
    result = run_check(groups, ref_df, k, ref_name) if check else None
    return Report(records, excluded, skipped, runs, summary, groups, ref_df, ref_name, tables, result,
                  prov, [Path(p) for p in paths])


# --------------------------------------------------------------------------- plots


def _figure_png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_deltas(report: Report) -> bytes | None:
    """Bar chart: each measured checkpoint's headline-metric delta vs the supervised baseline,
    per task; the reference's own delta for the same method as a black marker."""
    from matplotlib.figure import Figure

    refs = reference_entries(report.reference)
    points: dict[str, dict[str, float]] = {}   # label -> task -> delta
    paper: dict[tuple[str, str], float] = {}   # (label, task) -> reference delta
    tasks: list[str] = []
    for g in report.groups:
        if g.method == "supervised":
            continue
        metric = headline_metric(g.task)
        base = pick_baseline("supervised", g.task, g.engine, report.groups, refs, report.reference_name,
                             g.epochs)
        if base is None or metric not in g.mean or metric not in base[1]:
            continue
        name = f"{g.label} ({g.engine})"
        points.setdefault(name, {})[g.task] = g.mean[metric] - base[1][metric]
        if g.task not in tasks:
            tasks.append(g.task)
        entries, _ = match_reference(refs.get(g.task, []), g.method, g.epochs)
        sup = [e for e in refs.get(g.task, []) if e.method == "supervised" and metric in e.values]
        mine = [e for e in entries if metric in e.values]
        if sup and mine:
            paper[(name, g.task)] = mine[0].values[metric] - sup[0].values[metric]
    if not points:
        return None
    tasks.sort(key=task_sort_key)
    names = list(points)
    fig = Figure(figsize=(max(6.0, 1.1 * len(tasks) + 3), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, task in enumerate(tasks):
            if task in points[name]:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(points[name][task])
        ax.bar(xs, ys, width=width * 0.9, color=f"C{i % 10}", edgecolor="black", linewidth=0.4,
               label=name if len(names) <= 12 else None)
        px = [j - 0.4 + width * (i + 0.5) for j, t in enumerate(tasks) if (name, t) in paper]
        py = [paper[(name, t)] for t in tasks if (name, t) in paper]
        if px:
            ax.scatter(px, py, marker="_", s=300, color="black", zorder=3,
                       label=f"{report.reference_name} delta" if i == 0 else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_ylabel("Δ headline metric vs supervised")
    ax.set_title("Transfer gains over the supervised baseline")
    ax.legend(fontsize=7, loc="best")
    return _figure_png(fig)


def find_metrics_log(record: ResultRecord) -> Path | None:
    """The record's training log: artifacts.metrics_log, else metrics.jsonl (or detectron2's
    metrics.json) in artifacts.output_dir or config['output_dir']."""
    p = record.artifact_path("metrics_log")
    if p is not None:
        return p if p.is_file() else None
    folders = []
    out = record.artifact_path("output_dir")
    if out is not None:
        folders.append(out)
    cfg_out = record.config.get("output_dir")
    if isinstance(cfg_out, str) and cfg_out:
        folders.append(Path(cfg_out).expanduser())
        if record.source is not None and not Path(cfg_out).is_absolute():
            folders.append(record.source.parent / cfg_out)
    for folder in folders:
        for name in ("metrics.jsonl", "metrics.json"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_metrics_log(path: Path) -> dict[str, list[tuple[float, float]]]:
    """loss name -> [(step, value)]; lines need 'step' (or detectron2's 'iteration') and numeric
    'loss*' / 'total_loss' fields. Malformed lines are skipped."""
    curves: dict[str, list[tuple[float, float]]] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return curves
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        step = obj.get("step", obj.get("iteration"))
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        for key, value in obj.items():
            if (key.startswith("loss") or key == "total_loss") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and math.isfinite(value):
                curves.setdefault(key, []).append((float(step), float(value)))
    return curves


def plot_training_curves(
    records: Sequence[ResultRecord], max_runs: int = 12, max_keys: int = 4
) -> bytes | None:
    """One panel per loss key (total loss first), one line per run with a metrics log."""
    from matplotlib.figure import Figure

    logs: dict[Path, tuple[str, dict[str, list[tuple[float, float]]]]] = {}
    for r in records:
        path = find_metrics_log(r)
        if path is None or path in logs:
            continue
        curves = read_metrics_log(path)
        if curves:
            logs[path] = (f"{group_label(r)} {r.task} s{r.seed}", curves)
        if len(logs) >= max_runs:
            break
    if not logs:
        return None
    keys: list[str] = []
    for _, curves in logs.values():
        keys.extend(k for k in curves if k not in keys)
    keys.sort(key=lambda k: (k not in ("loss", "total_loss"), k))
    keys = keys[:max_keys]
    fig = Figure(figsize=(5.0 * len(keys), 3.8))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for label, curves in logs.values():
            if key in curves:
                pts = sorted(curves[key])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.0)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=6)
    return _figure_png(fig)


def make_plots(report: Report) -> dict[str, bytes]:
    """File name -> PNG bytes of the plots that have data."""
    plots = {}
    deltas = plot_deltas(report)
    if deltas is not None:
        plots["deltas_vs_supervised.png"] = deltas
    curves = plot_training_curves(report.records + report.excluded)
    if curves is not None:
        plots["training_curves.png"] = curves
    return plots


# --------------------------------------------------------------------------- renderers


def _fmt_provenance_frame(prov: pd.DataFrame) -> pd.DataFrame:
    """Provenance as display strings (hashes shortened)."""
    def short(x: Any, n: int) -> str:
        return MISSING if x is None or pd.isna(x) else str(x)[:n]

    return pd.DataFrame({
        "run_id": prov["run_id"], "task": prov["task"], "checkpoint": prov["label"],
        "engine": prov["engine"], "seed": prov["seed"].astype(str), "status": prov["status"],
        "torch": [short(x, 20) for x in prov["torch"]],
        "torchvision": [short(x, 20) for x in prov["torchvision"]],
        "detectron2": [short(x, 20) for x in prov["detectron2"]],
        "detco_bench": [short(x, 20) for x in prov["detco_bench"]],
        "commit": [short(x, 10) for x in prov["git_commit"]],
        "config_hash": [short(x, 12) for x in prov["config_hash"]],
        "ckpt_sha256": [short(x, 12) for x in prov["checkpoint_sha256"]],
        "device": [short(x, 30) for x in prov["device"]],
        "wall_clock_s": [MISSING if pd.isna(x) else f"{x:.1f}" for x in prov["wall_clock_s"]],
    })


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def frame_to_markdown(df: pd.DataFrame, right: Sequence[str] = ()) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, plot_files: Sequence[str] = ()) -> str:
    out = ["# detco-bench report", ""]
    out.append(f"{len(report.records)} record(s) aggregated into {len(report.groups)} group(s) "
               f"(checkpoint x task x engine); reference: `{report.reference_name}`; "
               f"{len(report.skipped)} skipped, {len(report.excluded)} not successful.")
    out.append("")
    out.append("Values are means over seeds (± sample std when n > 1); Δ rows subtract the named baseline "
               f"(|Δ| >= {HIGHLIGHT_DELTA:g} is highlighted in the terminal and HTML).")
    out.append("")
    for table in report.tables:
        out += [f"## {table.title}", "", frame_to_markdown(table.to_frame(), right=["n", *table.metrics])]
    if report.check is not None:
        out += ["## Check", "", report.check.summary_line(), ""]
        if len(report.check.table):
            out.append(frame_to_markdown(check_display_frame(report.check)))
        else:
            out += ["No reference metrics to compare.", ""]
    if report.provenance is not None and len(report.provenance):
        out += ["## Provenance", "", frame_to_markdown(_fmt_provenance_frame(report.provenance))]
    if report.excluded:
        df = pd.DataFrame({"run_id": [r.run_id for r in report.excluded],
                           "task": [r.task for r in report.excluded],
                           "status": [r.status for r in report.excluded],
                           "error": [(r.error or "")[:200] for r in report.excluded]})
        out += ["## Runs not aggregated (status is not success)", "", frame_to_markdown(df)]
    if report.skipped:
        df = pd.DataFrame({"path": [str(p) for p, _ in report.skipped],
                           "reason": [r for _, r in report.skipped]})
        out += ["## Skipped records", "", frame_to_markdown(df)]
    for name in plot_files:
        out += [f"![{name}](plots/{name})", ""]
    return "\n".join(out).rstrip() + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], align: str,
                 midrules: Sequence[int] = ()) -> list[str]:
    out = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{latex_escape(title)}}}",
           f"\\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for i, row in enumerate(rows):
        if i in midrules:
            out.append(r"\midrule")
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return out


def render_latex(report: Report) -> str:
    out = ["% detco-bench report -- needs \\usepackage{booktabs,xcolor}",
           r"\providecommand{\up}[1]{\textcolor{green!50!black}{#1}}",
           r"\providecommand{\down}[1]{\textcolor{red!70!black}{#1}}",
           r"\providecommand{\flat}[1]{\textcolor{gray}{#1}}", ""]
    for table in report.tables:
        header = ["Task", "Row", "Engine", "$n$", *(latex_escape(m) for m in table.metrics)]
        rows, midrules, last_task = [], [], None
        for row in table.rows:
            if last_task is not None and row.task != last_task:
                midrules.append(len(rows))
            last_task = row.task
            cells = []
            for m in table.metrics:
                text = format_cell(row, m, pm="$\\pm$")  # digits, signs and $\pm$ only
                if row.kind == "delta" and text != MISSING:
                    text = f"\\{delta_direction(row.values.get(m))}{{{text}}}"
                cells.append(text)
            label = (r"\quad $\Delta$ vs " + latex_escape(row.baseline or "")) if row.kind == "delta" \
                else latex_escape(row.label)
            rows.append([latex_escape(row.task), label, latex_escape(row.engine),
                         "" if row.n is None else str(row.n), *cells])
        out += _latex_table(table.title, header, rows, "lll" + "r" * (1 + len(table.metrics)), midrules)
    if report.check is not None and len(report.check.table):
        df = check_display_frame(report.check).drop(columns=["note"])
        header = [latex_escape(c) if c != "Δ" else r"$\Delta$" for c in df.columns]
        rows = [[latex_escape(v) for v in r] for r in df.itertuples(index=False)]
        out += _latex_table(f"Check against {report.check.reference_name} (k = {report.check.k:g})", header,
                            rows, "llll" + "r" * 5 + "l")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left}
th{border-bottom:2px solid #444}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.reference td{color:#555;font-style:italic}tr.delta td{font-size:.9em}
.up{color:#1e7d32;font-weight:600}.down{color:#c0392b;font-weight:600}.flat{color:#888}
.pass{color:#1e7d32;font-weight:600}.FAIL{color:#c0392b;font-weight:700}
.nc{color:#b07d00}.note{color:#666}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""


def _html_frame(df: pd.DataFrame, right: Sequence[str] = (), status_col: str | None = None) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in df.columns)
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row, strict=True):
            cls = "num" if c in right else ""
            if c == status_col:
                cls = {"pass": "pass", "FAIL": "FAIL"}.get(v, "nc")
            cells.append(f'<td class="{cls}">{esc(str(v))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_html(report: Report, plots: dict[str, bytes] | None = None) -> str:
    esc = html.escape
    body = ["<h1>detco-bench report</h1>",
            f"<p>{len(report.records)} record(s) aggregated into {len(report.groups)} group(s); reference: "
            f"<code>{esc(report.reference_name)}</code>; {len(report.skipped)} skipped, "
            f"{len(report.excluded)} not successful. Δ rows: green &ge; +{HIGHLIGHT_DELTA:g}, "
            f"red &le; -{HIGHLIGHT_DELTA:g}.</p>"]
    for table in report.tables:
        body.append(f"<h2>{esc(table.title)}</h2>")
        head = ["task", "row", "engine", "n", *table.metrics]
        lines = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
        for row in table.rows:
            cells = [f"<td>{esc(row.task)}</td>", f"<td>{esc(row_label(row))}</td>",
                     f"<td>{esc(row.engine)}</td>",
                     f'<td class="num">{"" if row.n is None else row.n}</td>']
            for m in table.metrics:
                cls = "num" + (f" {delta_direction(row.values.get(m))}" if row.kind == "delta" else "")
                cells.append(f'<td class="{cls}">{esc(format_cell(row, m))}</td>')
            lines.append(f'<tr class="{row.kind}">' + "".join(cells) + "</tr>")
        lines.append("</tbody></table>")
        body.append("\n".join(lines))
    if report.check is not None:
        body.append("<h2>Check</h2>")
        body.append(f"<p><b>{esc(report.check.summary_line())}</b></p>")
        if len(report.check.table):
            body.append(_html_frame(check_display_frame(report.check),
                                    right=["n", "mean", "reference", "threshold", "Δ"], status_col="status"))
        else:
            body.append("<p>No reference metrics to compare.</p>")
    for name, data in (plots or {}).items():
        b64 = base64.b64encode(data).decode("ascii")
        body.append(f'<h2>{esc(name)}</h2><img alt="{esc(name)}" src="data:image/png;base64,{b64}">')
    if report.provenance is not None and len(report.provenance):
        body.append("<h2>Provenance</h2>")
        body.append(_html_frame(_fmt_provenance_frame(report.provenance)))
    if report.excluded:
        body.append("<h2>Runs not aggregated (status is not success)</h2>")
        body.append(_html_frame(pd.DataFrame({
            "run_id": [r.run_id for r in report.excluded], "task": [r.task for r in report.excluded],
            "status": [r.status for r in report.excluded],
            "error": [(r.error or "")[:200] for r in report.excluded]})))
    if report.skipped:
        body.append("<h2>Skipped records</h2>")
        body.append(_html_frame(pd.DataFrame({"path": [str(p) for p, _ in report.skipped],
                                              "reason": [r for _, r in report.skipped]})))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>detco-bench report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_RICH_DELTA = {"up": "bold green", "down": "bold red", "flat": "grey50"}
_RICH_STATUS = {STATUS_PASS: "bold green", STATUS_FAIL: "bold red"}


def render_terminal(report: Report, console: Any) -> None:
    """Rich tables on `console` (stdout)."""
    from rich.table import Table

    console.print(f"[bold]detco-bench report[/bold]: {len(report.records)} record(s) -> "
                  f"{len(report.groups)} group(s); reference [cyan]{report.reference_name}[/cyan]; "
                  f"{len(report.skipped)} skipped, {len(report.excluded)} not successful")
    if not report.groups:
        console.print("[yellow]no successful result records to aggregate[/yellow]")
    for t in report.tables:
        table = Table(title=t.title, title_justify="left", show_lines=False, header_style="bold")
        for col in ("task", "row", "engine"):
            table.add_column(col)
        table.add_column("n", justify="right")
        for m in t.metrics:
            table.add_column(m, justify="right")
        last_task = None
        for row in t.rows:
            if last_task is not None and row.task != last_task:
                table.add_section()
            last_task = row.task
            cells = []
            for m in t.metrics:
                text = format_cell(row, m)
                if row.kind == "delta" and text != MISSING:
                    text = f"[{_RICH_DELTA[delta_direction(row.values.get(m))]}]{text}[/]"
                cells.append(text)
            style = {"reference": "italic grey62", "delta": "grey50"}.get(row.kind, "")
            label = row_label(row)
            if row.kind == "delta":
                label = "  " + label
            table.add_row(row.task, label, row.engine, "" if row.n is None else str(row.n), *cells,
                          style=style)
        console.print(table)
    if report.check is not None:
        df = check_display_frame(report.check)
        if len(df):
            table = Table(title="Check", title_justify="left", header_style="bold")
            for col in df.columns:
                table.add_column(col, justify="right" if col in ("n", "mean", "reference", "threshold", "Δ")
                                 else "left")
            for row in df.itertuples(index=False):
                cells = list(row)
                st = _RICH_STATUS.get(cells[-2], "yellow")
                cells[-2] = f"[{st}]{cells[-2]}[/]"
                table.add_row(*cells)
            console.print(table)
        console.print(report.check.summary_line())
    if report.provenance is not None and len(report.provenance):
        df = _fmt_provenance_frame(report.provenance)
        table = Table(title="Provenance", title_justify="left", header_style="bold")
        for col in df.columns:
            table.add_column(col, overflow="fold")
        for row in df.head(TERMINAL_ROW_LIMIT).itertuples(index=False):
            table.add_row(*map(str, row))
        console.print(table)
        if len(df) > TERMINAL_ROW_LIMIT:
            console.print(f"... {len(df) - TERMINAL_ROW_LIMIT} more run(s): see runs.csv")


def write_report(report: Report, out_dir: str | os.PathLike, formats: Iterable[str],
                 console: Any = None) -> list[Path]:
    """Write the requested formats into `out_dir` atomically (terminal goes to `console`).
    Returns the written files."""
    formats = set(formats)
    out = Path(out_dir)
    written: list[Path] = []
    plots = make_plots(report) if formats & {"png", "html"} else {}
    if "png" in formats:
        for name, data in plots.items():
            written.append(atomic_write_bytes(out / "plots" / name, data))
    if "md" in formats:
        names = list(plots) if "png" in formats else []
        written.append(atomic_write_text(out / "report.md", render_markdown(report, names)))
    if "csv" in formats:
        written.append(atomic_write_text(out / "summary.csv", report.summary.to_csv(index=False)))
        if report.check is not None:
            written.append(atomic_write_text(out / "check.csv", report.check.table.to_csv(index=False)))
        if report.provenance is not None:
            written.append(atomic_write_text(out / "runs.csv", report.provenance.to_csv(index=False)))
        if report.skipped:
            skipped = pd.DataFrame({"path": [str(p) for p, _ in report.skipped],
                                    "reason": [r for _, r in report.skipped]})
            written.append(atomic_write_text(out / "skipped.csv", skipped.to_csv(index=False)))
    if "latex" in formats:
        written.append(atomic_write_text(out / "report.tex", render_latex(report)))
    if "html" in formats:
        written.append(atomic_write_text(out / "report.html", render_html(report, plots)))
    if "terminal" in formats and console is not None:
        render_terminal(report, console)
    return written


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """'terminal,md' (or a list of such strings) -> validated format names; ValueError on unknown."""
    items = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part == "all":
                names.extend(FORMATS)
                continue
            part = FORMAT_ALIASES.get(part, part)
            if part not in FORMATS:
                raise ValueError(f"unknown format '{part}' (choose from {', '.join(FORMATS)})")
            names.append(part)
    return list(dict.fromkeys(names))
