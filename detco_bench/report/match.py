"""Reference matching: the reference rows a measured group is compared with or subtracted from.

The reference frame (`detco_bench.reference.load_reference`) has one row per number; here its
rows become one `RefEntry` per (task, method, epochs, engine), and a group finds its entries by
method and pretraining epochs, and its delta baseline by method and engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from detco_bench.report.aggregate import Group, as_epochs
from detco_bench.report.taxonomy import method_label, method_sort_key


@dataclass
class RefEntry:
    """One method row of a reference table for one task and engine."""

    method: str
    epochs: int | None
    task: str
    engine: str
    values: dict[str, float] = field(default_factory=dict)
    spreads: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return method_label(self.method, self.epochs)


def reference_entries(reference: pd.DataFrame) -> dict[str, list[RefEntry]]:
    """task -> reference rows (one per method / epochs / engine), in table order."""
    by_key: dict[tuple, RefEntry] = {}
    for row in reference.itertuples(index=False):
        ep = as_epochs(row.pretrain_epochs)
        key = (row.task, row.method, ep, row.engine)
        e = by_key.get(key)
        if e is None:
            e = by_key[key] = RefEntry(row.method, ep, row.task, row.engine)
        e.values[row.metric] = float(row.value)
        e.spreads[row.metric] = float(row.spread)
    out: dict[str, list[RefEntry]] = {}
    for e in sorted(by_key.values(), key=lambda e: (method_sort_key(e.method), e.epochs or 0, e.engine)):
        out.setdefault(e.task, []).append(e)
    return out


def match_reference(
    entries: Sequence[RefEntry], method: str, epochs: int | None
) -> tuple[list[RefEntry], str | None]:
    """Reference rows for a checkpoint (all engines). Returns (rows, reason-if-ambiguous).

    Empty reference epochs match any checkpoint; a checkpoint without pretrain_epochs matches
    when the reference has a single epochs value for the method, else it is ambiguous."""
    rows = [e for e in entries if e.method == method]
    if epochs is None:
        eps = sorted({e.epochs for e in rows if e.epochs is not None})
        if len(eps) > 1:
            return [], ("record has no pretrain_epochs; reference has "
                        + ", ".join(str(x) for x in eps))
        return rows, None
    return [e for e in rows if e.epochs is None or e.epochs == epochs], None


def pick_baseline(
    method: str, task: str, engine: str, groups: Sequence[Group], refs: dict[str, list[RefEntry]],
    reference_name: str, epochs: int | None = None, settings: str | None = None,
) -> tuple[str, dict[str, float], str | None] | None:
    """The row that deltas are taken against: a measured `method` group on the same task and
    engine (most seeds wins) and, given `settings` (a comparison hash), the same settings; else
    the reference's `method` row for that task and engine. Returns (label, values, group key or
    None)."""
    measured = [g for g in groups if g.method == method and g.task == task and g.engine == engine
                and (settings is None or g.comparison_hash == settings)]
    if measured:
        best = sorted(measured, key=lambda g: (-g.n, g.label))[0]
        return best.label, best.mean, best.key
    candidates = [e for e in refs.get(task, []) if e.method == method and e.engine == engine]
    if candidates:
        # Same epochs as the row being compared if the reference has them, else its standard row
        # (the paper default of 200 epochs; 90 for supervised).
        best = sorted(candidates, key=lambda e: (e.epochs != epochs, e.epochs not in (None, 90, 200),
                                                 e.epochs or 0))[0]
        return f"{best.label} ({reference_name})", best.values, None
    return None
