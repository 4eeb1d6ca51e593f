"""The LaTeX report (``report.tex``): booktabs tables with coloured deltas, and the check."""

from __future__ import annotations

from collections.abc import Sequence

from detco_bench.report.build import Report
from detco_bench.report.display import DELTAS_TITLE, check_display_frame, deltas_display_frame
from detco_bench.report.tables import MISSING, NOISE, ReportTable, delta_class, format_cell

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# \up / \down / \flat are defined by the document (providecommand) so a user's own definitions win.
_PREAMBLE = ["% detco-bench report -- needs \\usepackage{booktabs,xcolor}",
             r"\providecommand{\up}[1]{\textcolor{green!50!black}{#1}}",
             r"\providecommand{\down}[1]{\textcolor{red!70!black}{#1}}",
             r"\providecommand{\flat}[1]{\textcolor{gray}{#1}}",
             # a delta whose 95% CI over seeds contains 0, whatever its size
             r"\providecommand{\noise}[1]{\textcolor{gray}{#1$^\sim$}}", ""]


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], align: str,
                 midrules: Sequence[int] = ()) -> list[str]:
    out = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{latex_escape(title)}}}",
           f"\\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for i, row in enumerate(rows):
        if i in midrules:
            out.append(r"\midrule")
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return out


def _report_table(table: ReportTable) -> list[str]:
    header = ["Task", "Row", "Engine", *(["Protocol"] if table.show_protocol else []), "$n$",
              *(latex_escape(m) for m in table.metrics)]
    rows, midrules, last_task = [], [], None
    for row in table.rows:
        if last_task is not None and row.task != last_task:
            midrules.append(len(rows))
        last_task = row.task
        cells = []
        for m in table.metrics:
            text = format_cell(row, m, pm="$\\pm$")  # digits, signs and $\pm$ only
            if row.kind == "delta" and text != MISSING:
                cls = delta_class(row, m)
                text = f"\\{'noise' if cls == NOISE else cls}{{{text}}}"
            cells.append(text)
        label = (r"\quad $\Delta$ vs " + latex_escape(row.baseline or "")) if row.kind == "delta" \
            else latex_escape(row.label)
        rows.append([latex_escape(row.task), label, latex_escape(row.engine),
                     *([latex_escape(row.protocol or "")] if table.show_protocol else []),
                     "" if row.n is None else str(row.n), *cells])
    return _latex_table(table.title, header, rows,
                        "lll" + ("l" if table.show_protocol else "") + "r" * (1 + len(table.metrics)), midrules)


def render_latex(report: Report) -> str:
    out = list(_PREAMBLE)
    for table in report.tables:
        out += _report_table(table)
    if report.deltas:
        df = deltas_display_frame(report.deltas).drop(columns=["engine", "note"])
        header = [latex_escape(c).replace("Δ", r"$\Delta$") for c in df.columns]
        rows = [[latex_escape(v).replace("Δ", r"$\Delta$") for v in r] for r in df.itertuples(index=False)]
        out += _latex_table(DELTAS_TITLE.replace("Δ", "Delta"), header, rows, "llll" + "r" * 5 + "l")
    if report.check is not None and len(report.check.table):
        df = check_display_frame(report.check).drop(columns=["note"])
        header = [latex_escape(c) if c != "Δ" else r"$\Delta$" for c in df.columns]
        rows = [[latex_escape(v) for v in r] for r in df.itertuples(index=False)]
        out += _latex_table(f"Check against {report.check.reference_name} (k = {report.check.k:g})", header,
                            rows, "llll" + "r" * 5 + "l")
    return "\n".join(out)
