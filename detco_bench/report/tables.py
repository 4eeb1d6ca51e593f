"""Paper-style tables (the paper's Tables 3-8): reference rows, measured rows and delta rows.

One `ReportTable` per report section with results (`taxonomy.SECTIONS`, plus "Other tasks").
Per task: the reference's rows, then each measured group followed by its deltas vs the
supervised baseline and MoCo v2. Cells are formatted here once for every renderer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from detco_bench.report.aggregate import Group
from detco_bench.report.match import pick_baseline, reference_entries
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


@dataclass
class ReportTable:
    """One section's table: its key and title, the metric columns and the rows."""

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
    """One decimal (the paper's precision); deltas signed; measured means with ± std when n > 1."""
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


def build_tables(
    groups: Sequence[Group], reference: pd.DataFrame, reference_name: str = "paper"
) -> list[ReportTable]:
    """Paper-style tables for every section with measured results: per task the reference rows,
    then each measured checkpoint followed by its deltas vs Supervised and MoCo v2."""
    refs = reference_entries(reference)
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
