"""Paper-style tables (the paper's Tables 3-8): reference rows, measured rows and delta rows.

One `ReportTable` per report section with results (`taxonomy.SECTIONS`, plus "Other tasks").
Per task: the reference's rows, then each measured group followed by its deltas vs the
supervised baseline and MoCo v2. Cells are formatted here once for every renderer; a NaN metric
shows as ``NaN!`` (never as a missing cell), and a delta row carries the significance of each
delta against a measured baseline so that renderers can mark those within noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from detco_bench.report.aggregate import Group
from detco_bench.report.deltas import HarnessDelta, group_deltas
from detco_bench.report.grouping import PROTOCOL_UNKNOWN
from detco_bench.report.match import pick_baseline, reference_entries
from detco_bench.report.significance import DeltaStat
from detco_bench.report.taxonomy import (
    OTHER_SECTION_KEY,
    ReportSection,
    method_sort_key,
    metric_sort_key,
    section_of,
    task_sort_key,
)

BASELINES = ("supervised", "mocov2")
# The MoCo / DetCo tables mark gaps of at least +0.5 point in green; we also mark drops of at
# least 0.5 point in red (everything in between is grey).
HIGHLIGHT_DELTA = 0.5
MISSING = "-"
NAN_CELL = "NaN!"  # a metric the evaluator could not compute (no predictions): flagged, not hidden
NOISE = "noise"  # delta class of a delta whose 95% CI contains 0
OTHER_TITLE = "Other tasks"


@dataclass
class TableRow:
    """One row of a table: a reference row, a measured group, or a group's delta vs a baseline."""

    kind: str  # "reference" | "measured" | "delta"
    task: str
    label: str
    engine: str
    n: int | None
    values: dict[str, float]
    stds: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None  # delta rows: the label of the row subtracted
    protocol: str | None = None  # measured rows: exact / adapted / unknown
    stats: dict[str, DeltaStat] = field(default_factory=dict)  # delta rows vs a measured baseline


@dataclass
class ReportTable:
    """One section's table: its key and title, the metric columns and the rows."""

    key: str
    title: str
    metrics: list[str]
    rows: list[TableRow]
    # A protocol column only when some group of the table knows its protocol (transfer records).
    show_protocol: bool = False

    @property
    def columns(self) -> list[str]:
        """The columns before the metrics."""
        return ["task", "row", "engine", *(["protocol"] if self.show_protocol else []), "n"]

    def to_frame(self) -> pd.DataFrame:
        """The table as display strings (what Markdown / HTML / LaTeX show)."""
        data = [[row.task, row_label(row), row.engine, *([row.protocol or ""] if self.show_protocol else []),
                 "" if row.n is None else str(row.n), *(format_cell(row, m) for m in self.metrics)]
                for row in self.rows]
        return pd.DataFrame(data, columns=[*self.columns, *self.metrics])


def row_label(row: TableRow, delta: str = "Δ") -> str:
    if row.kind == "delta":
        return f"{delta} vs {row.baseline}"
    return row.label


def format_cell(row: TableRow, metric: str, pm: str = "±") -> str:
    """One decimal (the paper's precision); deltas signed; measured means with ± std when n > 1;
    NaN (a metric without a number) as ``NaN!``, a metric not measured as ``-``."""
    value = row.values.get(metric)
    if value is None:
        return MISSING
    if math.isnan(value):
        return NAN_CELL
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


def delta_class(row: TableRow, metric: str) -> str:
    """How a delta cell is marked: `NOISE` when its 95% CI contains 0 (seeds on both sides),
    else `delta_direction`."""
    stat = row.stats.get(metric)
    if stat is not None and stat.within_noise:
        return NOISE
    return delta_direction(row.values.get(metric))


def build_tables(
    groups: Sequence[Group], reference: pd.DataFrame, reference_name: str = "paper",
    deltas: Sequence[HarnessDelta] = (),
) -> list[ReportTable]:
    """Paper-style tables for every section with measured results: per task the reference rows,
    then each measured checkpoint followed by its deltas vs Supervised and MoCo v2. `deltas`
    (`deltas.harness_deltas`) provide the significance of deltas against measured baselines
    (computed here when not given)."""
    refs = reference_entries(reference)
    stats = {(d.group.key, d.baseline.key, d.metric): d.stat for d in deltas}
    by_key = {g.key: g for g in groups}
    by_task: dict[str, list[Group]] = {}
    for g in groups:
        by_task.setdefault(g.task, []).append(g)
    sections: dict[str, tuple[ReportSection | None, list[str]]] = {}
    for task in sorted(by_task, key=task_sort_key):
        section = section_of(task)
        key = section.key if section else OTHER_SECTION_KEY
        sections.setdefault(key, (section, []))[1].append(task)

    tables = []
    for key, (section, tasks) in sections.items():
        measured_metrics = {m for t in tasks for g in by_task[t] for m in g.mean}
        if section is not None:
            metrics = list(section.metrics) + [m for m in section.optional_metrics if m in measured_metrics]
            title = section.title
        else:
            metrics = sorted(measured_metrics, key=metric_sort_key)
            title = OTHER_TITLE
        rows: list[TableRow] = []
        for task in tasks:
            for e in refs.get(task, []):
                if any(m in e.values for m in metrics):
                    rows.append(TableRow("reference", task, f"{e.label} ({reference_name})", e.engine,
                                         None, dict(e.values)))
            task_groups = sorted(by_task[task], key=lambda g: (method_sort_key(g.method), g.epochs or 0,
                                                               g.label, g.engine))
            for g in task_groups:
                rows.append(TableRow("measured", task, g.label, g.engine, g.n, dict(g.mean), dict(g.std),
                                     protocol=g.protocol))
                for base_method in BASELINES:
                    if base_method == "mocov2" and g.method in ("random", "supervised"):
                        continue  # the paper compares pretraining methods with MoCo v2 only
                    base = pick_baseline(base_method, task, g.engine, groups, refs, reference_name,
                                         g.epochs, g.comparison_hash)
                    if base is None or base[2] == g.key:
                        continue
                    base_label, base_values, base_key = base
                    values = {m: g.mean[m] - base_values[m] for m in metrics
                              if m in g.mean and m in base_values}
                    row_stats: dict[str, DeltaStat] = {}
                    if base_key is not None:  # a measured baseline: the delta's significance
                        row_stats = {m: stats[(g.key, base_key, m)] for m in values
                                     if (g.key, base_key, m) in stats}
                        missing = [m for m in values if m not in row_stats]
                        if missing:  # a pair `deltas` does not hold (random init vs supervised)
                            row_stats |= group_deltas(g, by_key[base_key], missing)
                    if values:
                        rows.append(TableRow("delta", task, g.label, g.engine, None, values,
                                             baseline=base_label, stats=row_stats))
        known = any(g.protocol != PROTOCOL_UNKNOWN for t in tasks for g in by_task[t])
        tables.append(ReportTable(key, title, metrics, rows, show_protocol=known))
    return tables
