"""Terminal tables that fit the console: columns that do not fit are left out, not squeezed.

rich squeezes a table wider than the console until its cells read ``bbox/A…``; a report read at
80 columns (a CI log, a laptop terminal) then shows nothing. Here a table is built from
`Column`s: the required ones always, the optional ones in priority order while the table's
minimum width still fits (the first that does not fit ends the list, so a metric is never shown
while an earlier one is not), and the label column folds. What is left out is named in a
footnote; the files have every column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.measure import Measurement
from rich.table import Table

UNBOUNDED = 10_000  # a width no console has: measures a table's natural minimum
FOOTNOTE_NAMES = 4  # columns named in the "not shown" footnote; the rest are counted
LABEL_MIN_WIDTH = 30  # a folding column keeps this much (or its widest cell) before others are shown


@dataclass
class Column:
    """One column: header, cells (str or rich Text), alignment; `wrap`: may fold (labels);
    `priority`: the order optional columns are tried in (lower first; default: left to right)."""

    header: str
    cells: list[Any]
    justify: str = "left"
    required: bool = True
    wrap: bool = False
    priority: int = 0


@dataclass
class Layout:
    """The rows' styles and section breaks (one entry per row)."""

    styles: list[str] = field(default_factory=list)
    section_after: list[bool] = field(default_factory=list)


def _cell_width(cell: Any) -> int:
    text = getattr(cell, "plain", cell)
    return max((cell_len(line) for line in str(text).splitlines()), default=0)


def _natural_width(column: Column) -> int:
    return max([_cell_width(column.header), *map(_cell_width, column.cells)])


def _min_width(column: Column) -> int:
    """A folding column may wrap, but not below LABEL_MIN_WIDTH (or its widest cell, if less):
    a label folded into 8-character lines is as unreadable as a squeezed number."""
    return min(LABEL_MIN_WIDTH, _natural_width(column))


def _table(columns: Sequence[Column], layout: Layout, title: str | None, fold_width: int | None = None) -> Table:
    """The rich Table; the folding column gets `fold_width` (default: its minimum). A fixed width
    keeps rich from squeezing it below that (rich would then crop the last columns instead)."""
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, title_style="bold")
    for c in columns:
        width = (fold_width or _min_width(c)) if c.wrap else None
        table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap, overflow="fold", width=width)
    n_rows = len(columns[0].cells) if columns else 0
    for i in range(n_rows):
        table.add_row(*(c.cells[i] for c in columns),
                      style=layout.styles[i] if i < len(layout.styles) else None,
                      end_section=layout.section_after[i] if i < len(layout.section_after) else False)
    return table


def fit_table(console: Any, columns: Sequence[Column], layout: Layout | None = None,
              title: str | None = None) -> tuple[Any, list[str]]:
    """(a rich Table no wider than the console, headers of the optional columns left out). At
    most one column should fold (`wrap`): it gets the width the others leave, up to its widest
    cell."""
    layout = layout or Layout()
    options = console.options.update(max_width=UNBOUNDED)

    def width(trial: Sequence[Column]) -> int:
        return Measurement.get(console, options, _table(trial, layout, title)).maximum

    chosen = [c for c in columns if c.required]
    left_out: list[str] = []
    for c in sorted((c for c in columns if not c.required), key=lambda c: c.priority):
        if left_out:
            left_out.append(c.header)
            continue
        trial = [x for x in columns if x in chosen or x is c]
        if width(trial) <= console.width:
            chosen = trial
        else:
            left_out.append(c.header)
    spare = max(0, console.width - width(chosen))
    fold = next((c for c in chosen if c.wrap), None)
    fold_width = min(_natural_width(fold), _min_width(fold) + spare) if fold else None
    return _table(chosen, layout, title, fold_width), left_out


def print_fitted(console: Any, columns: Sequence[Column], layout: Layout | None = None,
                 title: str | None = None, where: str = "report.md") -> None:
    """Print `fit_table` and, when columns were left out, one line naming them and `where`."""
    table, left_out = fit_table(console, columns, layout, title)
    console.print(table)
    if left_out:
        names = ", ".join(left_out[:FOOTNOTE_NAMES])
        if len(left_out) > FOOTNOTE_NAMES:
            names += f" and {len(left_out) - FOOTNOTE_NAMES} more"
        console.print(f"  (not shown at {console.width} columns: {names}; see {where})",
                      style="grey50", markup=False, highlight=False)
