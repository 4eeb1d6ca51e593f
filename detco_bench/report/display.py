"""Display frames every renderer shares: the check, the deltas vs in-harness baselines, protocol
fidelity, provenance, excluded and skipped runs, as strings.

The paper-style tables format themselves (`ReportTable.to_frame`); these are the report's other
sections, built once so that Markdown, HTML, LaTeX, the terminal and the CSV files agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from detco_bench.report.build import Report
from detco_bench.report.check import CheckResult
from detco_bench.report.deltas import HarnessDelta
from detco_bench.report.grouping import PROTOCOL_UNKNOWN
from detco_bench.report.tables import MISSING, NAN_CELL

#: Columns of `check_display_frame` that hold numbers (right-aligned where alignment exists).
CHECK_NUMBER_COLUMNS = ("n", "mean", "reference", "threshold", "Δ")
ERROR_CHARS = 200  # a traceback's tail is in the run's own log; the report shows its start
DELTAS_TITLE = "Δ vs in-harness baselines"
DELTAS_INTRO = ("Each group minus each baseline measured in the harness (those of run --baselines, and random init, "
                "supervised, MoCo v2) on the same task and engine under the same settings; a baseline of other "
                "settings gets no delta (see Flags). With >= 2 seeds on both sides: the 95% confidence interval (Welch-"
                "Satterthwaite df, t quantile) and the Welch t-test p-value; 'within noise' when the interval "
                "contains 0. ref Δ: the reference's delta for the same pair of methods.")
PROTOCOL_TITLE = "Protocol fidelity"
PROTOCOL_INTRO = ("exact: the published config of the task (8 GPUs, synchronized BN, real data); adapted: how it "
                  "differs; unknown: the records do not say (older records, linear probes). --check against the "
                  "paper does not compare adapted runs unless --allow-adapted.")
FLAGS_TITLE = "Flags"
#: Columns of `deltas_display_frame` that hold numbers.
DELTA_NUMBER_COLUMNS = ("n", "Δ", "95% CI", "p", "ref Δ")
PROTOCOL_SUMMARY_KEYS = ("world_size", "total_batch", "ims_per_bn_group", "base_lr", "max_iter")


def fmt_number(x: Any, fmt: str) -> str:
    """A number for display: `MISSING` for None / NA, `NAN_CELL` for NaN."""
    if x is None or x is pd.NA:
        return MISSING
    if isinstance(x, float) and math.isnan(x):
        return NAN_CELL
    return format(x, fmt)


def fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low: float | None, high: float | None) -> str:
    return MISSING if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"


def check_display_frame(check: CheckResult) -> pd.DataFrame:
    """The check table as display strings."""
    def num(x: Any, fmt: str) -> str:  # no number for this row (not comparable, missing...)
        return MISSING if x is None or pd.isna(x) else format(x, fmt)

    t = check.table
    return pd.DataFrame({
        "task": t["task"], "checkpoint": t["checkpoint"], "engine": t["engine"], "metric": t["metric"],
        "n": [num(x, "d") for x in t["n"]],
        # A NaN mean is a measured NaN (a FAIL): shown as such, never as an empty cell.
        "mean": [fmt_number(x, ".2f") if n else MISSING for x, n in zip(t["mean"], t["n"].fillna(0), strict=True)],
        "reference": [num(x, ".1f") for x in t["reference"]],
        "threshold": [num(x, ".2f") for x in t["threshold"]],
        "Δ": [num(x, "+.2f") for x in t["delta"]], "status": t["status"], "note": t["note"],
    })


def deltas_display_frame(deltas: Sequence[HarnessDelta]) -> pd.DataFrame:
    """Every delta vs an in-harness baseline: n (seeds of each side), Δ, 95% CI, Welch p-value,
    the reference's delta for the same pair of methods ("ref Δ"), and the verdict."""
    return pd.DataFrame({
        "task": [d.task for d in deltas], "checkpoint": [d.group.label for d in deltas],
        "engine": [d.engine for d in deltas], "baseline": [d.baseline.label for d in deltas],
        "metric": [d.metric for d in deltas], "n": [f"{d.stat.n_a} vs {d.stat.n_b}" for d in deltas],
        "Δ": [fmt_number(d.stat.delta, "+.2f") for d in deltas],
        "95% CI": [fmt_ci(d.stat.low, d.stat.high) for d in deltas],
        "p": [fmt_p(d.stat.p) for d in deltas],
        "ref Δ": [fmt_number(d.paper, "+.1f") for d in deltas],
        "verdict": [d.stat.verdict for d in deltas], "note": [d.note for d in deltas],
    })


def deltas_csv_frame(deltas: Sequence[HarnessDelta]) -> pd.DataFrame:
    """The deltas as raw numbers (``deltas.csv``)."""
    return pd.DataFrame({
        "task": [d.task for d in deltas], "engine": [d.engine for d in deltas],
        "checkpoint": [d.group.label for d in deltas], "method": [d.group.method for d in deltas],
        "group": [d.group.key for d in deltas], "baseline": [d.baseline.label for d in deltas],
        "baseline_method": [d.baseline.method for d in deltas],
        "baseline_group": [d.baseline.key for d in deltas], "metric": [d.metric for d in deltas],
        "n": [d.stat.n_a for d in deltas], "baseline_n": [d.stat.n_b for d in deltas],
        "delta": [d.stat.delta for d in deltas], "ci_low": [d.stat.low for d in deltas],
        "ci_high": [d.stat.high for d in deltas], "df": [d.stat.df for d in deltas],
        "p": [d.stat.p for d in deltas], "reference_delta": [d.paper for d in deltas],
        "verdict": [d.stat.verdict for d in deltas], "note": [d.note for d in deltas],
    })


def protocol_display_frame(report: Report) -> pd.DataFrame:
    """Per group: exact / adapted / unknown, the batch summary and every difference from the
    published protocol (joined by '; ')."""
    rows = []
    for g in report.groups:
        proto = report.protocols.get(g.key) or {}
        rows.append({"task": g.task, "checkpoint": g.label, "engine": g.engine, "protocol": g.protocol,
                     **{k: MISSING if proto.get(k) is None else str(proto[k]) for k in PROTOCOL_SUMMARY_KEYS},
                     "differences": "; ".join(proto.get("differences") or [])
                     or ("records do not say" if g.protocol == PROTOCOL_UNKNOWN else "")})
    return pd.DataFrame(rows, columns=["task", "checkpoint", "engine", "protocol", *PROTOCOL_SUMMARY_KEYS,
                                       "differences"])


def provenance_display_frame(prov: pd.DataFrame) -> pd.DataFrame:
    """Provenance as display strings (hashes shortened)."""
    def short(x: Any, n: int) -> str:
        return MISSING if x is None or pd.isna(x) else str(x)[:n]

    return pd.DataFrame({
        "run_id": prov["run_id"], "task": prov["task"], "checkpoint": prov["label"],
        "engine": prov["engine"], "seed": prov["seed"].astype(str), "status": prov["status"],
        "torch": [short(x, 20) for x in prov["torch"]],
        "torchvision": [short(x, 20) for x in prov["torchvision"]],
        "detectron2": [short(x, 20) for x in prov["detectron2"]],
        "detco_bench": [short(x, 20) for x in prov["detco_bench"]],
        "commit": [short(x, 10) for x in prov["git_commit"]],
        "config_hash": [short(x, 12) for x in prov["config_hash"]],
        "ckpt_sha256": [short(x, 12) for x in prov["checkpoint_sha256"]],
        "device": [short(x, 30) for x in prov["device"]],
        "wall_clock_s": [MISSING if pd.isna(x) else f"{x:.1f}" for x in prov["wall_clock_s"]],
    })


def excluded_frame(report: Report) -> pd.DataFrame:
    """The runs not aggregated because their status is not success, with the start of the error."""
    return pd.DataFrame({"run_id": [r.run_id for r in report.excluded],
                         "task": [r.task for r in report.excluded],
                         "status": [r.status for r in report.excluded],
                         "error": [(r.error or "")[:ERROR_CHARS] for r in report.excluded]})


def skipped_frame(report: Report) -> pd.DataFrame:
    """The record files that could not be read, and why."""
    return pd.DataFrame({"path": [str(p) for p, _ in report.skipped],
                         "reason": [r for _, r in report.skipped]})
