"""Output formats: parsing ``--format`` and writing the report's files (each one atomically)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from detco_bench.report.build import Report
from detco_bench.report.plots import make_plots
from detco_bench.report.render_csv import render_csv
from detco_bench.report.render_html import render_html
from detco_bench.report.render_latex import render_latex
from detco_bench.report.render_markdown import render_markdown
from detco_bench.report.render_terminal import render_terminal
from pretrain.atomic import atomic_write_bytes, atomic_write_text

FORMATS = ("terminal", "md", "csv", "latex", "html", "png")
FORMAT_ALIASES = {"markdown": "md", "tex": "latex", "rich": "terminal", "plots": "png"}


def write_report(report: Report, out_dir: str | os.PathLike, formats: Iterable[str],
                 console: Any = None) -> list[Path]:
    """Write the requested formats into `out_dir` atomically (terminal goes to `console`).
    Returns the written files."""
    formats = set(formats)
    out = Path(out_dir)
    written: list[Path] = []
    # The HTML page embeds the plots, so they are drawn for it even without png files.
    plots = make_plots(report) if formats & {"png", "html"} else {}
    if "png" in formats:
        for name, data in plots.items():
            written.append(atomic_write_bytes(out / "plots" / name, data))
    if "md" in formats:
        names = list(plots) if "png" in formats else []
        written.append(atomic_write_text(out / "report.md", render_markdown(report, names)))
    if "csv" in formats:
        for name, text in render_csv(report).items():
            written.append(atomic_write_text(out / name, text))
    if "latex" in formats:
        written.append(atomic_write_text(out / "report.tex", render_latex(report)))
    if "html" in formats:
        written.append(atomic_write_text(out / "report.html", render_html(report, plots)))
    if "terminal" in formats and console is not None:
        render_terminal(report, console)
    return written


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """'terminal,md' (or a list of such strings) -> validated format names; ValueError on unknown."""
    items = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part == "all":
                names.extend(FORMATS)
                continue
            part = FORMAT_ALIASES.get(part, part)
            if part not in FORMATS:
                raise ValueError(f"unknown format '{part}' (choose from {', '.join(FORMATS)})")
            names.append(part)
    return list(dict.fromkeys(names))
