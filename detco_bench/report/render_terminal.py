"""The terminal report: rich tables that fit the console.

Every table fits the console's width (`terminal_layout`): at 80 columns the label, engine, n and
the first metrics are shown and the rest is named in a footnote (the files have everything).
The task name heads its rows instead of repeating on each; provenance is summarised as distinct
values (runs.csv has every run); the check shows each group's rows under one heading.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.text import Text

from detco_bench.report.build import Report
from detco_bench.report.check import STATUS_FAIL, STATUS_MISSING, STATUS_PASS
from detco_bench.report.deltas import HarnessDelta
from detco_bench.report.display import PROTOCOL_SUMMARY_KEYS, check_display_frame, fmt_number, fmt_p
from detco_bench.report.grouping import PROTOCOL_ADAPTED, PROTOCOL_UNKNOWN
from detco_bench.report.significance import VERDICT_NOISE, VERDICT_SIGNIFICANT
from detco_bench.report.tables import NOISE, ReportTable, delta_class, format_cell, row_label
from detco_bench.report.taxonomy import headline_metric
from detco_bench.report.terminal_layout import Column, Layout, print_fitted

# Long stores would scroll the tables away; the files have every row.
TERMINAL_ROW_LIMIT = 60
NOISE_MARK = "~"  # after a delta whose 95% CI contains 0
_RICH_DELTA = {"up": "bold green", "down": "bold red", "flat": "grey50", NOISE: "grey50"}
_RICH_STATUS = {STATUS_PASS: "bold green", STATUS_FAIL: "bold red"}  # any other status: yellow
_RICH_ROW = {"reference": "italic grey62", "delta": "grey50"}
_RICH_VERDICT = {VERDICT_SIGNIFICANT: "bold", VERDICT_NOISE: "grey50"}
_RICH_PROTOCOL = {PROTOCOL_ADAPTED: "yellow", PROTOCOL_UNKNOWN: "grey50"}


def _text(value: Any, style: str = "") -> Text:
    return Text(str(value), style=style)  # never parsed as markup: labels hold "[1a2b3c4d]"


def _report_table(t: ReportTable, console: Any) -> None:
    label, engine, protocol, n = [], [], [], []
    metrics: dict[str, list[Any]] = {m: [] for m in t.metrics}
    layout = Layout()
    last_task = None
    for row in t.rows:
        if row.task != last_task:
            if layout.section_after:
                layout.section_after[-1] = True
            label.append(_text(row.task, "bold"))
            for col in (engine, protocol, n, *metrics.values()):
                col.append("")
            layout.styles.append("")
            layout.section_after.append(False)
            last_task = row.task
        label.append(_text(("    " if row.kind == "delta" else "  ") + row_label(row)))
        engine.append(_text(row.engine))
        protocol.append(_text(row.protocol or "", _RICH_PROTOCOL.get(row.protocol or "", "")))
        n.append("" if row.n is None else str(row.n))
        for m in t.metrics:
            text = format_cell(row, m)
            if row.kind == "delta" and row.values.get(m) is not None:
                cls = delta_class(row, m)
                metrics[m].append(_text(text + (NOISE_MARK if cls == NOISE else ""), _RICH_DELTA[cls]))
            else:
                metrics[m].append(_text(text))
        layout.styles.append(_RICH_ROW.get(row.kind, ""))
        layout.section_after.append(False)
    engines = sorted({e.plain for e in engine if e})
    title = t.title
    columns = [Column("row", label, wrap=True)]
    if len(engines) == 1:  # one engine: said once in the title, the column's width goes to metrics
        title += f" (engine: {engines[0]})"
    else:
        columns.append(Column("engine", engine))
    if t.show_protocol:
        columns.append(Column("protocol", protocol))
    columns.append(Column("n", n, justify="right"))
    columns += [Column(m, cells, justify="right", required=i == 0) for i, (m, cells) in enumerate(metrics.items())]
    print_fitted(console, columns, layout, title=title)


def _print_deltas(report: Report, console: Any) -> None:
    """The headline metric's deltas vs every measured baseline (all metrics: report.md)."""
    shown = [d for d in report.deltas if d.metric == headline_metric(d.task)]
    if not shown:
        return
    cols: dict[str, list[Any]] = {h: [] for h in ("row", "n", "Δ ± 95% CI", "p", "ref Δ", "verdict", "note")}
    layout = Layout()

    def add(cells: dict[str, Any], style: str = "") -> None:
        for h in cols:
            cols[h].append(cells.get(h, ""))
        layout.styles.append(style)
        layout.section_after.append(False)

    last: tuple[str, str] | None = None
    last_group = None
    for d in shown[: TERMINAL_ROW_LIMIT]:
        if (d.task, d.engine) != last:
            if layout.section_after:
                layout.section_after[-1] = True
            add({"row": _text(f"{d.task} · {d.metric} · {d.engine}", "bold")})
            last, last_group = (d.task, d.engine), None
        if d.group.key != last_group:
            add({"row": _text(f"  {d.group.label}")})
            last_group = d.group.key
        add(_delta_cells(d))
    print_fitted(console, [
        Column("row", cols["row"], wrap=True),
        Column("n", cols["n"], justify="right", required=False, priority=2),
        Column("Δ ± 95% CI", cols["Δ ± 95% CI"], justify="right"),
        Column("p", cols["p"], justify="right", required=False, priority=0),
        Column("ref Δ", cols["ref Δ"], justify="right", required=False, priority=1),
        Column("verdict", cols["verdict"]),
        Column("note", cols["note"], required=False, priority=3),
    ], layout, title=f"Δ vs in-harness baselines (headline metric; ref Δ: {report.reference_name})")
    if len(shown) > TERMINAL_ROW_LIMIT:
        console.print(f"  ({len(shown) - TERMINAL_ROW_LIMIT} more delta(s): see report.md, deltas.csv)",
                      markup=False)


def _delta_cells(d: HarnessDelta) -> dict[str, Any]:
    s = d.stat
    delta = fmt_number(s.delta, "+.2f")
    if s.tested:  # the interval is symmetric: its half-width is shorter than [low, high]
        delta += f" ± {(s.high - s.low) / 2:.2f}"
    return {"row": _text(f"    vs {d.baseline.label}"), "n": f"{s.n_a} vs {s.n_b}",
            "Δ ± 95% CI": delta, "p": fmt_p(s.p),
            "ref Δ": fmt_number(d.paper, "+.1f"), "verdict": _text(s.verdict, _RICH_VERDICT.get(s.verdict, "")),
            "note": _text(d.note)}


def _print_protocol(report: Report, console: Any) -> None:
    known = [g for g in report.groups if g.protocol != PROTOCOL_UNKNOWN]
    unknown = len(report.groups) - len(known)
    if known:
        console.print(_text("Protocol fidelity", "bold"))
    for g in known[:TERMINAL_ROW_LIMIT]:
        proto = report.protocols.get(g.key) or {}
        summary = ", ".join(f"{k} {proto[k]}" for k in PROTOCOL_SUMMARY_KEYS if proto.get(k) is not None)
        console.print(_text(f"{g.task} · {g.label} · {g.engine}: ", "")
                      + _text(g.protocol, _RICH_PROTOCOL.get(g.protocol, "green"))
                      + _text(f" ({summary})" if summary else ""))
        for diff in proto.get("differences") or []:
            console.print(_text(f"    - {diff}", "grey50"))
    if unknown:
        console.print(_text(f"protocol unknown for {unknown} group(s): their records do not say "
                            "(older records, linear probes)", "grey50"))


def _print_flags(report: Report, console: Any) -> None:
    flags = report.flags
    if not len(flags):
        return
    console.print(_text("Flags", "bold"))
    for row in flags.head(TERMINAL_ROW_LIMIT).itertuples(index=False):
        console.print(_text(f"  {row.task} · {row.checkpoint} · {row.engine}: ") + _text(row.flag, "yellow"))
    if len(flags) > TERMINAL_ROW_LIMIT:
        console.print(f"  ({len(flags) - TERMINAL_ROW_LIMIT} more flag(s): see report.md)", markup=False)


def _print_check(report: Report, console: Any) -> None:
    df = check_display_frame(report.check)
    cols: dict[str, list[Any]] = {h: [] for h in ("row", "n", "mean", "reference", "threshold", "Δ", "status",
                                                  "note")}
    layout = Layout()
    n_groups = 0
    for _, rows in df.groupby(["task", "checkpoint", "engine"], sort=False):
        n_groups += 1
        if n_groups > TERMINAL_ROW_LIMIT:
            continue
        shown = rows[rows.status != STATUS_MISSING]
        missing = rows[rows.status == STATUS_MISSING].metric.tolist()
        notes = set(shown.note)
        common = notes.pop() if len(notes) == 1 else None
        first = rows.iloc[0]
        head = f"{first.task} · {first.checkpoint} · {first.engine}"
        if common:
            head += f"\n  {common}"
        if missing:
            head += f"\n  {len(missing)} reference metric(s) not measured"
        if layout.section_after:
            layout.section_after[-1] = True
        for values in [{"row": _text(head, "bold")}, *shown.to_dict("records")]:
            if "metric" in values:
                values.update(row=_text(f"  {values['metric']}"), note="" if common else _text(values["note"]),
                              status=_text(values["status"], _RICH_STATUS.get(values["status"], "yellow")))
            for h in cols:
                cols[h].append(values.get(h, ""))
            layout.styles.append("")
            layout.section_after.append(False)
    if cols["row"]:
        print_fitted(console, [
            Column("row", cols["row"], wrap=True),
            *(Column(h, cols[h], justify="right", required=h in ("mean", "threshold"), priority=i)
              for i, h in enumerate(("n", "mean", "reference", "threshold", "Δ"))),
            Column("status", cols["status"]),
            Column("note", cols["note"], required=False, priority=9),
        ], layout, title="Check", where="check.csv")
    if n_groups > TERMINAL_ROW_LIMIT:
        console.print(f"  ({n_groups - TERMINAL_ROW_LIMIT} more group(s): see check.csv)", markup=False)
    console.print(report.check.summary_line(), markup=False)


def _print_provenance(report: Report, console: Any) -> None:
    prov = report.provenance
    fields = [("torch", "torch"), ("torchvision", "torchvision"), ("detectron2", "detectron2"),
              ("detco_bench", "detco_bench"), ("git commit", "git_commit"), ("device", "device"),
              ("hostname", "hostname")]
    names, values = [], []
    for name, col in fields:
        counts = Counter("-" if v is None or v != v else str(v)[:12 if col == "git_commit" else 40]
                         for v in prov[col])
        names.append(name)
        values.append(_text(", ".join(f"{v} ({c})" if len(counts) > 1 else v for v, c in counts.most_common())))
    wall = prov["wall_clock_s"].dropna()
    if len(wall):
        names.append("wall-clock")
        values.append(f"total {wall.sum() / 3600:.2f} h, median {wall.median() / 60:.1f} min per run")
    print_fitted(console, [Column("field", names), Column("values", values, wrap=True)],
                 title=f"Provenance ({len(prov)} run(s); every run: runs.csv)")


def render_terminal(report: Report, console: Any) -> None:
    """Rich tables on `console` (stdout), each fitting its width."""
    console.print(_text("detco-bench report", "bold")
                  + _text(f": {len(report.records)} record(s) -> {len(report.groups)} group(s); reference ")
                  + _text(report.reference_name, "cyan")
                  + _text(f"; {len(report.skipped)} skipped, {len(report.excluded)} not successful"))
    if not report.groups:
        console.print("[yellow]no successful result records to aggregate[/yellow]")
    for t in report.tables:
        _report_table(t, console)
    if any(delta_class(row, m) == NOISE for t in report.tables for row in t.rows for m in row.stats):
        console.print(f"  {NOISE_MARK}: within noise (the 95% CI over seeds contains 0)", style="grey50",
                      markup=False)
    _print_deltas(report, console)
    _print_protocol(report, console)
    _print_flags(report, console)
    if report.check is not None:
        _print_check(report, console)
    if report.provenance is not None and len(report.provenance):
        _print_provenance(report, console)
