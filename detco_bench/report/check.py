"""``--check``: measured mean >= reference - k * spread, per group and metric.

Each group (checkpoint x task x engine x settings) is checked on its own. Only a reference row of
the same engine is a comparison; other engines are "not comparable" (neither pass nor fail), and
so are runs adapted from the published protocol when the reference is the paper's (they did not
run the experiment the paper reports) unless they are explicitly allowed. A NaN metric (no
predictions) fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from detco_bench.report.aggregate import Group
from detco_bench.report.grouping import PROTOCOL_ADAPTED
from detco_bench.report.match import match_reference, reference_entries
from detco_bench.report.taxonomy import metric_sort_key

CHECK_COLUMNS = ["task", "checkpoint", "method", "pretrain_epochs", "engine", "protocol", "metric", "n", "mean",
                 "std", "reference", "spread", "threshold", "delta", "status", "note"]
ADAPTED_NOTE = "adapted from the published protocol (--allow-adapted compares it)"
STATUS_PASS, STATUS_FAIL = "pass", "FAIL"
STATUS_NOT_COMPARABLE, STATUS_AMBIGUOUS, STATUS_MISSING = "not comparable", "ambiguous", "missing"
STATUSES = (STATUS_PASS, STATUS_FAIL, STATUS_NOT_COMPARABLE, STATUS_AMBIGUOUS, STATUS_MISSING)
UNCOMPARED_STATUSES = (STATUS_NOT_COMPARABLE, STATUS_AMBIGUOUS, STATUS_MISSING)  # neither pass nor fail


@dataclass
class CheckResult:
    """The check table (`CHECK_COLUMNS`, one row per group and metric) and how it was made."""

    table: pd.DataFrame
    reference_name: str
    k: float

    def count(self, status: str) -> int:
        return int((self.table["status"] == status).sum()) if len(self.table) else 0

    @property
    def failed(self) -> bool:
        return self.count(STATUS_FAIL) > 0

    @property
    def compared(self) -> int:
        return self.count(STATUS_PASS) + self.count(STATUS_FAIL)

    def summary_line(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in STATUSES]
        return f"check (reference={self.reference_name}, k={self.k:g}): " + ", ".join(parts)


def run_check(groups: Sequence[Group], reference: pd.DataFrame, k: float = 2.0,
              reference_name: str = "paper", exclude_adapted: bool = False) -> CheckResult:
    """Compare every measured metric that has a reference: pass iff mean >= value - k * spread.

    Groups whose engine differs from every matching reference row are 'not comparable' (neither
    pass nor fail); so are groups whose protocol is 'adapted' when `exclude_adapted` (the paper's
    reference, without --allow-adapted). Reference metrics the group did not measure are listed
    as 'missing' (not a failure); a NaN mean (a seed without predictions) is a FAIL. A checkpoint
    without pretrain_epochs against several reference epochs is 'ambiguous'."""
    refs = reference_entries(reference)
    rows = []
    for g in groups:
        candidates = [e for e in refs.get(g.task, []) if e.method == g.method]
        if not candidates:
            continue
        base = {"task": g.task, "checkpoint": g.label, "method": g.method, "pretrain_epochs": g.epochs,
                "engine": g.engine, "protocol": g.protocol}
        same_engine = [e for e in candidates if e.engine == g.engine]
        if not same_engine:
            engines = ", ".join(sorted({e.engine for e in candidates}))
            shown, _ = match_reference(candidates, g.method, g.epochs)  # value shown if unambiguous
            ref_metrics = {m for e in candidates for m in e.values}
            for metric in sorted(ref_metrics & set(g.mean), key=metric_sort_key):
                ref_e = next((e for e in shown if metric in e.values), None)
                rows.append({**base, "metric": metric, "n": g.count[metric], "mean": g.mean[metric],
                             "std": g.std[metric], "reference": ref_e.values[metric] if ref_e else None,
                             "spread": ref_e.spreads[metric] if ref_e else None,
                             "status": STATUS_NOT_COMPARABLE, "note": f"reference engine: {engines}"})
            continue
        entries, ambiguous = match_reference(same_engine, g.method, g.epochs)
        if ambiguous:
            ref_metrics = {m for e in same_engine for m in e.values}
            for metric in sorted(ref_metrics & set(g.mean), key=metric_sort_key):
                rows.append({**base, "metric": metric, "n": g.count[metric], "mean": g.mean[metric],
                             "std": g.std[metric], "status": STATUS_AMBIGUOUS, "note": ambiguous})
            continue
        if not entries:
            continue  # the reference has this method only for other pretraining epochs
        # Several rows for the same engine only differ by epochs when the record has epochs and
        # the reference has an epoch-less row too: the exact epochs win.
        entry = sorted(entries, key=lambda e: e.epochs is None)[0]
        if exclude_adapted and g.protocol == PROTOCOL_ADAPTED:
            for metric in sorted(set(entry.values) & set(g.mean), key=metric_sort_key):
                rows.append({**base, "metric": metric, "n": g.count[metric], "mean": g.mean[metric],
                             "std": g.std[metric], "reference": entry.values[metric],
                             "spread": entry.spreads[metric], "status": STATUS_NOT_COMPARABLE,
                             "note": ADAPTED_NOTE})
            continue
        for metric in sorted(set(entry.values) | set(g.mean), key=metric_sort_key):
            if metric not in entry.values:
                continue
            ref_value, spread = entry.values[metric], entry.spreads[metric]
            threshold = ref_value - k * spread
            row = {**base, "metric": metric, "reference": ref_value, "spread": spread,
                   "threshold": threshold}
            if metric not in g.mean:
                rows.append({**row, "n": 0, "status": STATUS_MISSING,
                             "note": "reference metric not in the records"})
                continue
            mean = g.mean[metric]
            if math.isnan(mean):
                nan = g.nan.get(metric, 0)
                rows.append({**row, "n": g.count[metric], "mean": mean, "std": g.std[metric],
                             "status": STATUS_FAIL,
                             "note": f"NaN in {nan} of {g.count[metric]} seed(s) (no predictions?)"})
                continue
            ok = mean >= threshold - 1e-6
            rows.append({**row, "n": g.count[metric], "mean": mean, "std": g.std[metric],
                         "delta": mean - ref_value, "status": STATUS_PASS if ok else STATUS_FAIL,
                         "note": "" if ok else f"below {ref_value:g} - {k:g} x {spread:g}"})
    table = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    table["pretrain_epochs"] = table["pretrain_epochs"].astype("Int64")
    table["n"] = table["n"].astype("Int64")
    for col in ("mean", "std", "reference", "spread", "threshold", "delta"):
        table[col] = table[col].astype(float)
    table["note"] = table["note"].fillna("")
    return CheckResult(table, reference_name, k)
