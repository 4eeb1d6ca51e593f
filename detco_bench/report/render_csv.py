"""The CSV files: the aggregated summary, the deltas vs in-harness baselines, the check, every
run's provenance, the skipped records."""

from __future__ import annotations

from detco_bench.report.build import Report
from detco_bench.report.display import deltas_csv_frame, skipped_frame


def render_csv(report: Report) -> dict[str, str]:
    """File name -> CSV text, for the parts of the report that exist (raw values, not display strings)."""
    files = {"summary.csv": report.summary.to_csv(index=False)}
    if report.deltas:
        files["deltas.csv"] = deltas_csv_frame(report.deltas).to_csv(index=False)
    if report.check is not None:
        files["check.csv"] = report.check.table.to_csv(index=False)
    if report.provenance is not None:
        files["runs.csv"] = report.provenance.to_csv(index=False)
    if report.skipped:
        files["skipped.csv"] = skipped_frame(report).to_csv(index=False)
    return files
