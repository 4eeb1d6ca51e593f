"""Display frames every renderer shares: the check, provenance, excluded and skipped runs as strings.

The paper-style tables format themselves (`ReportTable.to_frame`); these are the report's other
sections, built once so that Markdown, HTML, LaTeX, the terminal and the CSV files agree.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from detco_bench.report.build import Report
from detco_bench.report.check import CheckResult
from detco_bench.report.tables import MISSING

#: Columns of `check_display_frame` that hold numbers (right-aligned where alignment exists).
CHECK_NUMBER_COLUMNS = ("n", "mean", "reference", "threshold", "Δ")
ERROR_CHARS = 200  # a traceback's tail is in the run's own log; the report shows its start


def check_display_frame(check: CheckResult) -> pd.DataFrame:
    """The check table as display strings."""
    def num(x: Any, fmt: str) -> str:
        return MISSING if x is None or pd.isna(x) else format(x, fmt)

    t = check.table
    return pd.DataFrame({
        "task": t["task"], "checkpoint": t["checkpoint"], "engine": t["engine"], "metric": t["metric"],
        "n": [num(x, "d") for x in t["n"]], "mean": [num(x, ".2f") for x in t["mean"]],
        "reference": [num(x, ".1f") for x in t["reference"]],
        "threshold": [num(x, ".2f") for x in t["threshold"]],
        "Δ": [num(x, "+.2f") for x in t["delta"]], "status": t["status"], "note": t["note"],
    })


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
