"""The terminal report: rich tables on a console (rich is imported only when it is drawn)."""

from __future__ import annotations

from typing import Any

from detco_bench.report.build import Report
from detco_bench.report.check import STATUS_FAIL, STATUS_PASS
from detco_bench.report.display import CHECK_NUMBER_COLUMNS, check_display_frame, provenance_display_frame
from detco_bench.report.tables import MISSING, ReportTable, delta_direction, format_cell, row_label

# Long stores would scroll the tables away; runs.csv has every run.
TERMINAL_ROW_LIMIT = 60
_RICH_DELTA = {"up": "bold green", "down": "bold red", "flat": "grey50"}
_RICH_STATUS = {STATUS_PASS: "bold green", STATUS_FAIL: "bold red"}  # any other status: yellow
_RICH_ROW = {"reference": "italic grey62", "delta": "grey50"}


def _report_table(t: ReportTable) -> Any:
    from rich.table import Table

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
        label = row_label(row)
        if row.kind == "delta":
            label = "  " + label
        table.add_row(row.task, label, row.engine, "" if row.n is None else str(row.n), *cells,
                      style=_RICH_ROW.get(row.kind, ""))
    return table


def _print_check(report: Report, console: Any) -> None:
    from rich.table import Table

    df = check_display_frame(report.check)
    if len(df):
        table = Table(title="Check", title_justify="left", header_style="bold")
        for col in df.columns:
            table.add_column(col, justify="right" if col in CHECK_NUMBER_COLUMNS else "left")
        status_idx = list(df.columns).index("status")
        for row in df.itertuples(index=False):
            cells = list(row)
            cells[status_idx] = f"[{_RICH_STATUS.get(cells[status_idx], 'yellow')}]{cells[status_idx]}[/]"
            table.add_row(*cells)
        console.print(table)
    console.print(report.check.summary_line())


def _print_provenance(report: Report, console: Any) -> None:
    from rich.table import Table

    df = provenance_display_frame(report.provenance)
    table = Table(title="Provenance", title_justify="left", header_style="bold")
    for col in df.columns:
        table.add_column(col, overflow="fold")
    for row in df.head(TERMINAL_ROW_LIMIT).itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)
    if len(df) > TERMINAL_ROW_LIMIT:
        console.print(f"... {len(df) - TERMINAL_ROW_LIMIT} more run(s): see runs.csv")


def render_terminal(report: Report, console: Any) -> None:
    """Rich tables on `console` (stdout)."""
    console.print(f"[bold]detco-bench report[/bold]: {len(report.records)} record(s) -> "
                  f"{len(report.groups)} group(s); reference [cyan]{report.reference_name}[/cyan]; "
                  f"{len(report.skipped)} skipped, {len(report.excluded)} not successful")
    if not report.groups:
        console.print("[yellow]no successful result records to aggregate[/yellow]")
    for t in report.tables:
        console.print(_report_table(t))
    if report.check is not None:
        _print_check(report, console)
    if report.provenance is not None and len(report.provenance):
        _print_provenance(report, console)
