"""The `Report` every renderer reads, and `build_report`: scan -> aggregate -> tables -> check."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from detco_bench.records import ResultRecord, default_results_dir, scan_records
from detco_bench.reference import empty_reference, load_reference
from detco_bench.report.aggregate import (
    Group,
    aggregate,
    aggregate_provenance,
    groups_from_summary,
    provenance_frame,
    runs_frame,
)
from detco_bench.report.check import CheckResult, run_check
from detco_bench.report.tables import ReportTable, build_tables


@dataclass
class Report:
    """Everything a report shows: the records (aggregated, excluded as not successful, skipped as
    unreadable), the aggregated frames and groups, the reference, the tables and the check."""

    records: list[ResultRecord]
    excluded: list[ResultRecord]
    skipped: list[tuple[Path, str]]
    runs: pd.DataFrame
    summary: pd.DataFrame
    groups: list[Group]
    reference: pd.DataFrame
    reference_name: str
    tables: list[ReportTable]
    check: CheckResult | None = None
    provenance: pd.DataFrame | None = None
    paths: list[Path] = field(default_factory=list)


def build_report(
    paths: Iterable[str | os.PathLike] | None = None,
    *,
    reference: str | os.PathLike | None = "paper",
    check: bool = False,
    k: float = 2.0,
    provenance: bool = False,
) -> Report:
    """Scan, validate, aggregate, tabulate and (optionally) check. Never raises for bad records;
    raises UserError for a bad reference."""
    paths = list(paths) if paths is not None else [default_results_dir()]
    all_records, skipped = scan_records(paths)
    records = [r for r in all_records if r.status == "success"]
    excluded = [r for r in all_records if r.status != "success"]
    if reference is None:
        ref_df, ref_name = empty_reference(), "none"
    else:
        ref_df = load_reference(reference)
        ref_name = ref_df.attrs.get("name", str(reference))
    runs = runs_frame(records)
    summary = aggregate(runs)
    prov = None
    if provenance:
        prov = provenance_frame(records)
        summary = summary.merge(aggregate_provenance(prov), on="group", how="left")
    groups = groups_from_summary(summary)
    tables = build_tables(groups, ref_df, ref_name)
    result = run_check(groups, ref_df, k, ref_name) if check else None
    return Report(records, excluded, skipped, runs, summary, groups, ref_df, ref_name, tables, result,
                  prov, [Path(p) for p in paths])
