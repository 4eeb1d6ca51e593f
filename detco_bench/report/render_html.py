"""The HTML report (``report.html``): one self-contained page, inline CSS, plots as base64 PNG."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import pandas as pd

from detco_bench.report.build import Report
from detco_bench.report.check import STATUS_FAIL, STATUS_PASS
from detco_bench.report.display import (
    CHECK_NUMBER_COLUMNS,
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
from detco_bench.report.tables import HIGHLIGHT_DELTA, NOISE, ReportTable, delta_class, format_cell, row_label

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left}
th{border-bottom:2px solid #444}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.reference td{color:#555;font-style:italic}tr.delta td{font-size:.9em}
.up{color:#1e7d32;font-weight:600}.down{color:#c0392b;font-weight:600}.flat{color:#888}
.noise{color:#888;font-style:italic}.noise::after{content:"~"}
.pass{color:#1e7d32;font-weight:600}.FAIL{color:#c0392b;font-weight:700}
.nc{color:#b07d00}.note{color:#666}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""
_STATUS_CLASS = {STATUS_PASS: "pass", STATUS_FAIL: "FAIL"}  # any other status: "nc"


def _html_frame(df: pd.DataFrame, right: Sequence[str] = (), status_col: str | None = None) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in df.columns)
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row, strict=True):
            cls = "num" if c in right else ""
            if c == status_col:
                cls = _STATUS_CLASS.get(v, "nc")
            cells.append(f'<td class="{cls}">{esc(str(v))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _report_table(table: ReportTable) -> str:
    esc = html.escape
    head = [*table.columns, *table.metrics]
    lines = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in table.rows:
        cells = [f"<td>{esc(row.task)}</td>", f"<td>{esc(row_label(row))}</td>",
                 f"<td>{esc(row.engine)}</td>"]
        if table.show_protocol:
            cells.append(f"<td>{esc(row.protocol or '')}</td>")
        cells.append(f'<td class="num">{"" if row.n is None else row.n}</td>')
        for m in table.metrics:
            cls = "num" + (f" {delta_class(row, m)}" if row.kind == "delta" else "")
            title = ' title="within noise: the 95% CI contains 0"' if cls.endswith(NOISE) else ""
            cells.append(f'<td class="{cls}"{title}>{esc(format_cell(row, m))}</td>')
        lines.append(f'<tr class="{row.kind}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def render_html(report: Report, plots: dict[str, bytes] | None = None) -> str:
    """The page; `plots` (file name -> PNG bytes) are embedded, so the file stands alone."""
    esc = html.escape
    body = ["<h1>detco-bench report</h1>",
            f"<p>{len(report.records)} record(s) aggregated into {len(report.groups)} group(s); reference: "
            f"<code>{esc(report.reference_name)}</code>; {len(report.skipped)} skipped, "
            f"{len(report.excluded)} not successful. Δ rows: green &ge; +{HIGHLIGHT_DELTA:g}, "
            f"red &le; -{HIGHLIGHT_DELTA:g}.</p>"]
    for table in report.tables:
        body.append(f"<h2>{esc(table.title)}</h2>")
        body.append(_report_table(table))
    if report.deltas:
        body += [f"<h2>{esc(DELTAS_TITLE)}</h2>", f'<p class="note">{esc(DELTAS_INTRO)}</p>',
                 _html_frame(deltas_display_frame(report.deltas), right=DELTA_NUMBER_COLUMNS)]
    if report.groups:
        body += [f"<h2>{esc(PROTOCOL_TITLE)}</h2>", f'<p class="note">{esc(PROTOCOL_INTRO)}</p>',
                 _html_frame(protocol_display_frame(report))]
    if len(report.flags):
        body += [f"<h2>{esc(FLAGS_TITLE)}</h2>", _html_frame(report.flags)]
    if report.check is not None:
        body.append("<h2>Check</h2>")
        body.append(f"<p><b>{esc(report.check.summary_line())}</b></p>")
        if len(report.check.table):
            body.append(_html_frame(check_display_frame(report.check), right=CHECK_NUMBER_COLUMNS,
                                    status_col="status"))
        else:
            body.append("<p>No reference metrics to compare.</p>")
    for name, data in (plots or {}).items():
        b64 = base64.b64encode(data).decode("ascii")
        body.append(f'<h2>{esc(name)}</h2><img alt="{esc(name)}" src="data:image/png;base64,{b64}">')
    if report.provenance is not None and len(report.provenance):
        body.append("<h2>Provenance</h2>")
        body.append(_html_frame(provenance_display_frame(report.provenance)))
    if report.excluded:
        body.append("<h2>Runs not aggregated (status is not success)</h2>")
        body.append(_html_frame(excluded_frame(report)))
    if report.skipped:
        body.append("<h2>Skipped records</h2>")
        body.append(_html_frame(skipped_frame(report)))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>detco-bench report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
