"""`detco-bench report`: result records -> paper-style tables, deltas, --check, plots and files.

Pipeline (one module per step)::

    records.scan_records(paths)     records (status success are aggregated), skipped (path, reason)
    aggregate.runs_frame(records)   one row per (record, metric)
    aggregate.aggregate(runs)       per (checkpoint, task, engine, metric): mean, std (ddof=1), n
    tables.build_tables(...)        paper-style tables (Tables 3-8): reference rows, measured rows,
                                    delta rows vs the supervised baseline and MoCo v2
    check.run_check(...)            measured mean >= reference - k * spread, per metric
    write.write_report(...)         terminal (rich), Markdown, CSV, LaTeX (booktabs), HTML, PNG

`build.build_report` runs the steps up to the check into a `Report`. Which table a task goes in,
and the order of tasks, metrics and methods, is `taxonomy` (derived from `detco_bench.tasks`);
`match` pairs groups with reference rows (loaded by `detco_bench.reference`); `display` holds
the frames all renderers share; `plots` and `metrics_log` draw the PNGs; `render_*` are the
formats. This package re-exports what the CLI, the benchmarks and the tests use.
"""

from detco_bench.report.aggregate import aggregate, groups_from_summary, runs_frame
from detco_bench.report.build import Report, build_report
from detco_bench.report.check import STATUS_FAIL, STATUS_PASS, CheckResult, run_check
from detco_bench.report.metrics_log import find_metrics_log, read_metrics_log
from detco_bench.report.render_markdown import frame_to_markdown
from detco_bench.report.tables import build_tables, delta_direction
from detco_bench.report.write import FORMATS, parse_formats, write_report

__all__ = [
    "FORMATS",
    "STATUS_FAIL",
    "STATUS_PASS",
    "CheckResult",
    "Report",
    "aggregate",
    "build_report",
    "build_tables",
    "delta_direction",
    "find_metrics_log",
    "frame_to_markdown",
    "groups_from_summary",
    "parse_formats",
    "read_metrics_log",
    "run_check",
    "runs_frame",
    "write_report",
]
