"""The report's plots (matplotlib, Agg canvas; imported only when a plot is drawn): PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detco_bench.records import ResultRecord
from detco_bench.report.aggregate import group_label
from detco_bench.report.build import Report
from detco_bench.report.match import match_reference, pick_baseline, reference_entries
from detco_bench.report.metrics_log import find_metrics_log, read_metrics_log
from detco_bench.report.taxonomy import headline_metric, task_sort_key

DELTAS_PNG = "deltas_vs_supervised.png"
CURVES_PNG = "training_curves.png"


def _figure_png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def delta_points(report: Report) -> tuple[dict[str, dict[str, float]], dict[tuple[str, str], float], list[str]]:
    """What `plot_deltas` draws: bar label -> task -> headline delta vs supervised, (label, task)
    -> the reference's delta for the same method, and the tasks in table order."""
    refs = reference_entries(report.reference)
    points: dict[str, dict[str, float]] = {}
    paper: dict[tuple[str, str], float] = {}
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
    tasks.sort(key=task_sort_key)
    return points, paper, tasks


def plot_deltas(report: Report) -> bytes | None:
    """Bar chart: each measured checkpoint's headline-metric delta vs the supervised baseline,
    per task; the reference's own delta for the same method as a black marker."""
    from matplotlib.figure import Figure

    points, paper, tasks = delta_points(report)
    if not points:
        return None
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
        plots[DELTAS_PNG] = deltas
    curves = plot_training_curves(report.records + report.excluded)
    if curves is not None:
        plots[CURVES_PNG] = curves
    return plots
