"""`detco-bench report`: result records -> paper-style tables, deltas, --check, plots and files.

Pipeline (one module per step)::

    records.scan_records(paths)     records (status success are aggregated), skipped (path, reason)
    grouping.group_records(records) groups (checkpoint, task, engine, settings hash); reruns of a
                                    seed replaced by the latest
    aggregate.runs_frame(records)   one row per (record, metric)
    aggregate.aggregate(runs)       per (group, metric) over distinct seeds: mean, std (ddof=1), n,
                                    NaN count
    deltas.harness_deltas(...)      every group vs every measured baseline: Δ, 95% CI, Welch p
                                    (`significance`), the reference's Δ
    tables.build_tables(...)        paper-style tables (Tables 3-8): reference rows, measured rows,
                                    delta rows vs the supervised baseline and MoCo v2
    check.run_check(...)            measured mean >= reference - k * spread, per metric
    flags.flags_frame(...)          reruns ignored, NaN metrics, record notes, missing task metrics
    write.write_report(...)         terminal (rich), Markdown, CSV, LaTeX (booktabs), HTML, PNG

`build.build_report` runs the steps up to the check into a `Report`. Which table a task goes in,
and the order of tasks, metrics and methods, is `taxonomy` (derived from `detco_bench.tasks`);
`match` pairs groups with reference rows (loaded by `detco_bench.reference`); `display` holds
the frames all renderers share; `plots` and `metrics_log` draw the PNGs; `render_*` are the
formats; `terminal_layout` fits terminal tables to the console's width. This package re-exports
what the CLI, the benchmarks and the tests use.
"""

from detco_bench.report.aggregate import aggregate, groups_from_summary, runs_frame
from detco_bench.report.build import Report, build_report
from detco_bench.report.check import STATUS_FAIL, STATUS_PASS, UNCOMPARED_STATUSES, CheckResult, run_check
from detco_bench.report.deltas import HarnessDelta, harness_deltas
from detco_bench.report.grouping import Grouping, group_records
from detco_bench.report.metrics_log import find_metrics_log, read_metrics_log
from detco_bench.report.render_markdown import frame_to_markdown
from detco_bench.report.significance import DeltaStat, welch_delta
from detco_bench.report.tables import build_tables, delta_direction
from detco_bench.report.write import FORMATS, parse_formats, write_report

__all__ = [
    "FORMATS",
    "STATUS_FAIL",
    "STATUS_PASS",
    "UNCOMPARED_STATUSES",
    "CheckResult",
    "DeltaStat",
    "Grouping",
    "HarnessDelta",
    "Report",
    "aggregate",
    "build_report",
    "build_tables",
    "delta_direction",
    "find_metrics_log",
    "frame_to_markdown",
    "group_records",
    "groups_from_summary",
    "harness_deltas",
    "parse_formats",
    "read_metrics_log",
    "run_check",
    "runs_frame",
    "welch_delta",
    "write_report",
]
