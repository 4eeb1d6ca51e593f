"""The Markdown report (``report.md``): every table, the check, provenance and plot links."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from detco_bench.report.build import Report
from detco_bench.report.display import (
    DELTA_NUMBER_COLUMNS,
    DELTAS_INTRO,
    DELTAS_TITLE,
    FLAGS_TITLE,
    PROTOCOL_INTRO,
    PROTOCOL_TITLE,
    check_display_frame,
    deltas_display_frame,
    excluded_frame,
    protocol_display_frame,
    provenance_display_frame,
    skipped_frame,
)
from detco_bench.report.tables import HIGHLIGHT_DELTA


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def frame_to_markdown(df: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """A pipe table of a display frame; `right` names the right-aligned columns."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, plot_files: Sequence[str] = ()) -> str:
    """The report as Markdown; `plot_files` are linked from ``plots/`` (written beside it)."""
    out = ["# detco-bench report", ""]
    out.append(f"{len(report.records)} record(s) aggregated into {len(report.groups)} group(s) "
               f"(checkpoint x task x engine x settings); reference: `{report.reference_name}`; "
               f"{len(report.skipped)} skipped, {len(report.excluded)} not successful.")
    out.append("")
    out.append("Values are means over distinct seeds (± sample std when n > 1; `NaN!`: a seed had no number); "
               f"Δ rows subtract the named baseline (|Δ| >= {HIGHLIGHT_DELTA:g} is highlighted in the terminal "
               "and HTML).")
    out.append("")
    for table in report.tables:
        out += [f"## {table.title}", "", frame_to_markdown(table.to_frame(), right=["n", *table.metrics])]
    if report.deltas:
        out += [f"## {DELTAS_TITLE}", "", DELTAS_INTRO, "",
                frame_to_markdown(deltas_display_frame(report.deltas), right=DELTA_NUMBER_COLUMNS)]
    if report.groups:
        out += [f"## {PROTOCOL_TITLE}", "", PROTOCOL_INTRO, "", frame_to_markdown(protocol_display_frame(report))]
    if len(report.flags):
        out += [f"## {FLAGS_TITLE}", "", frame_to_markdown(report.flags)]
    if report.check is not None:
        out += ["## Check", "", report.check.summary_line(), ""]
        if len(report.check.table):
            out.append(frame_to_markdown(check_display_frame(report.check)))
        else:
            out += ["No reference metrics to compare.", ""]
    if report.provenance is not None and len(report.provenance):
        out += ["## Provenance", "", frame_to_markdown(provenance_display_frame(report.provenance))]
    if report.excluded:
        out += ["## Runs not aggregated (status is not success)", "", frame_to_markdown(excluded_frame(report))]
    if report.skipped:
        out += ["## Skipped records", "", frame_to_markdown(skipped_frame(report))]
    for name in plot_files:
        out += [f"![{name}](plots/{name})", ""]
    return "\n".join(out).rstrip() + "\n"
