"""The report's plots (matplotlib, Agg canvas; imported only when a plot is drawn): PNG bytes.

- deltas vs supervised: per task, each group's headline metric (named on the axis) minus the
  supervised baseline, with the 95% CI as error bars when both sides have >= 2 seeds (hatched
  bars: within noise) and the reference's own delta as a black tick;
- training curves: one panel per loss key, one line per run, each panel with its own legend; a
  log rewritten by resumed runs is read once per step (`metrics_log`), in step order.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detco_bench.records import ResultRecord
from detco_bench.report.build import Report
from detco_bench.report.grouping import group_records
from detco_bench.report.match import match_reference, pick_baseline, reference_entries
from detco_bench.report.metrics_log import find_metrics_log, read_metrics_log
from detco_bench.report.significance import DeltaStat
from detco_bench.report.taxonomy import headline_metric, task_sort_key

DELTAS_PNG = "deltas_vs_supervised.png"
CURVES_PNG = "training_curves.png"
MAX_LEGEND = 12  # more bars than this: a legend would cover the plot


# matplotlib is imported inside the functions that draw: it takes about a second to import, and
# the terminal, CSV and --check reports (what CI runs) draw nothing.
def _figure_png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


@dataclass(frozen=True)
class DeltaPoint:
    """One bar: the headline `metric` delta vs supervised; `stat` when the baseline was measured."""

    metric: str
    delta: float
    stat: DeltaStat | None = None


def delta_points(report: Report) -> tuple[dict[str, dict[str, DeltaPoint]], dict[tuple[str, str], float], list[str]]:
    """What `plot_deltas` draws: bar label -> task -> headline `DeltaPoint` vs supervised,
    (label, task) -> the reference's delta for the same method, and the tasks in table order."""
    refs = reference_entries(report.reference)
    stats = {(d.group.key, d.baseline.key, d.metric): d.stat for d in report.deltas}
    points: dict[str, dict[str, DeltaPoint]] = {}
    paper: dict[tuple[str, str], float] = {}
    tasks: list[str] = []
    for g in report.groups:
        if g.method == "supervised":
            continue
        metric = headline_metric(g.task)
        base = pick_baseline("supervised", g.task, g.engine, report.groups, refs, report.reference_name,
                             g.epochs, g.comparison_hash)
        if base is None or metric not in g.mean or metric not in base[1]:
            continue
        name = f"{g.label} ({g.engine})"
        stat = stats.get((g.key, base[2], metric)) if base[2] is not None else None
        points.setdefault(name, {})[g.task] = DeltaPoint(metric, g.mean[metric] - base[1][metric], stat)
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
    """`deltas_figure` as PNG bytes (None: nothing to plot)."""
    fig = deltas_figure(report)
    return None if fig is None else _figure_png(fig)


def deltas_figure(report: Report) -> Any:
    """Bar chart: each measured group's headline-metric delta vs the supervised baseline, per
    task (the x labels name the metric); 95% CI error bars where tested, hatched when within
    noise; the reference's own delta for the same method as a black marker."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    points, paper, tasks = delta_points(report)
    if not points:
        return None
    names = list(points)
    metric_of = {t: p.metric for by_task in points.values() for t, p in by_task.items()}
    fig = Figure(figsize=(max(6.0, 1.1 * len(tasks) + 3), 4.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(names)
    any_noise = False
    for i, name in enumerate(names):
        for j, task in enumerate(tasks):
            point = points[name].get(task)
            if point is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            noise = bool(point.stat is not None and point.stat.within_noise)
            any_noise |= noise
            first = task == next(t for t in tasks if t in points[name])  # one legend entry per bar series
            ax.bar([x], [point.delta], width=width * 0.9, color=f"C{i % 10}", edgecolor="black",
                   linewidth=0.4, hatch="//" if noise else None, label=name if first else None)
            if point.stat is not None and point.stat.tested:
                err = [[point.delta - point.stat.low], [point.stat.high - point.delta]]
                ax.errorbar([x], [point.delta], yerr=err, fmt="none", ecolor="black", elinewidth=0.9, capsize=3)
        px = [j - 0.4 + width * (i + 0.5) for j, t in enumerate(tasks) if (name, t) in paper]
        py = [paper[(name, t)] for t in tasks if (name, t) in paper]
        if px:
            ax.scatter(px, py, marker="_", s=300, color="black", zorder=3,
                       label=f"{report.reference_name} delta" if i == 0 else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n{metric_of[t]}" for t in tasks], rotation=30, ha="right")
    shown = sorted(set(metric_of.values()))
    ax.set_ylabel(f"Δ {shown[0] if len(shown) == 1 else 'headline metric (see x labels)'} vs supervised")
    ax.set_title("Gain over the supervised baseline (error bars: 95% CI over seeds)")
    handles, labels = ax.get_legend_handles_labels()
    if any_noise:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//"))
        labels.append("within noise (CI contains 0)")
    if len(names) <= MAX_LEGEND:
        ax.legend(handles, labels, fontsize=7, loc="best")
    return fig


def plot_training_curves(
    records: Sequence[ResultRecord], max_runs: int = 12, max_keys: int = 4
) -> bytes | None:
    """`training_curves_figure` as PNG bytes (None: no run has a log)."""
    fig = training_curves_figure(records, max_runs, max_keys)
    return None if fig is None else _figure_png(fig)


def training_curves_figure(records: Sequence[ResultRecord], max_runs: int = 12, max_keys: int = 4) -> Any:
    """One panel per loss key (total loss first), one line per run with a metrics log (runs in
    label order), and a legend on every panel (not every log has every key, so the lines differ
    between panels)."""
    from matplotlib.figure import Figure

    grouping = group_records(records)
    logs: dict[Path, tuple[str, dict[str, list[tuple[float, float]]]]] = {}
    for r in sorted(records, key=lambda r: (grouping.label[grouping.key[r.run_id]], r.task, r.seed, r.run_id)):
        path = find_metrics_log(r)
        if path is None or path in logs:
            continue
        curves = read_metrics_log(path)
        if curves:
            logs[path] = (f"{grouping.label[grouping.key[r.run_id]]} {r.task} s{r.seed}", curves)
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
                ax.plot([p[0] for p in curves[key]], [p[1] for p in curves[key]], label=label, linewidth=1.0)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return fig


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
