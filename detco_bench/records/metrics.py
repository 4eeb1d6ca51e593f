"""A success record's metrics: every key of its task, NaN (with a note) where there is no number.

An evaluator that gets no predictions returns NaN, or leaves keys out (COCOeval on an empty
result list). A record that silently lacks a key would read as "not measured"; one that keeps
the NaN and says why reads as what it is, a run that produced nothing to score. The report
flags NaN cells and `--check` fails them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def complete_metrics(
    metrics: Mapping[str, float], required: Iterable[str]
) -> tuple[dict[str, float], list[str]]:
    """(metrics with every `required` key, notes): a missing key becomes NaN, and every NaN
    (missing or returned) gets a note for the record's ``notes``."""
    out = {k: float(v) for k, v in metrics.items()}
    notes = []
    for key in required:
        if key not in out:
            out[key] = math.nan
            notes.append(f"{key}: not returned by the evaluator (no predictions?); recorded as NaN")
    notes += [f"{key}: the evaluator returned NaN (no predictions?)"
              for key, value in out.items() if math.isnan(value) and key in metrics]
    return out, notes
