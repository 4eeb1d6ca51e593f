"""The `Report` every renderer reads, and `build_report`: scan -> group -> aggregate -> deltas ->
tables -> check -> flags."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from detco_bench.records import ResultRecord, default_results_dir, scan_records
from detco_bench.reference import PAPER_REFERENCE, empty_reference, load_reference
from detco_bench.report.aggregate import (
    Group,
    aggregate,
    aggregate_provenance,
    groups_from_summary,
    provenance_frame,
    runs_frame,
)
from detco_bench.report.check import CheckResult, run_check
from detco_bench.report.deltas import HarnessDelta, harness_deltas, unpaired_baselines
from detco_bench.report.flags import FLAG_COLUMNS, flags_frame
from detco_bench.report.grouping import Grouping, group_records
from detco_bench.report.match import reference_entries
from detco_bench.report.tables import ReportTable, build_tables


@dataclass
class Report:
    """Everything a report shows: the records (aggregated, excluded as not successful, skipped as
    unreadable), the aggregated frames and groups, the reference, the tables and the check.

    deltas: every group vs every measured baseline of the same settings (`deltas.harness_deltas`);
    flags: reruns ignored, NaN metrics, record notes, baselines of other settings without a
    delta (`flags.flags_frame`); protocols: group key -> the protocol fidelity its records carry
    (None: unknown); grouping: which record is in which group, and which reruns were replaced."""

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
    deltas: list[HarnessDelta] = field(default_factory=list)
    flags: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FLAG_COLUMNS))
    protocols: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    grouping: Grouping = field(default_factory=Grouping)


def build_report(
    paths: Iterable[str | os.PathLike] | None = None,
    *,
    reference: str | os.PathLike | None = "paper",
    check: bool = False,
    k: float = 2.0,
    provenance: bool = False,
    allow_adapted: bool = False,
) -> Report:
    """Scan, validate, aggregate, tabulate and (optionally) check. Never raises for bad records;
    raises UserError for a bad reference. Against the built-in paper reference, runs adapted
    from the published protocol are 'not comparable' unless `allow_adapted`."""
    paths = list(paths) if paths is not None else [default_results_dir()]
    all_records, skipped = scan_records(paths)
    records = [r for r in all_records if r.status == "success"]
    excluded = [r for r in all_records if r.status != "success"]
    if reference is None:
        ref_df, ref_name = empty_reference(), "none"
    else:
        ref_df = load_reference(reference)
        ref_name = ref_df.attrs.get("name", str(reference))
    grouping = group_records(records)
    runs = runs_frame(records, grouping)
    summary = aggregate(runs)
    prov = None
    if provenance:
        prov = provenance_frame(records, grouping)
        summary = summary.merge(aggregate_provenance(prov), on="group", how="left")
    groups = groups_from_summary(summary, runs)
    deltas = harness_deltas(groups, reference_entries(ref_df))
    flags = flags_frame(groups, records, grouping, unpaired_baselines(groups))
    tables = build_tables(groups, ref_df, ref_name, deltas)
    # Only the paper's numbers are the published protocol; smoke references were measured with
    # adapted runs and a user's file says what it holds.
    exclude_adapted = ref_df.attrs.get("builtin") == PAPER_REFERENCE and not allow_adapted
    result = run_check(groups, ref_df, k, ref_name, exclude_adapted) if check else None
    protocols: dict[str, dict[str, Any] | None] = {}
    for r in records:
        if r.run_id not in grouping.superseded:
            protocols.setdefault(grouping.key[r.run_id], r.protocol)
    return Report(records, excluded, skipped, runs, summary, groups, ref_df, ref_name, tables, result,
                  prov, [Path(p) for p in paths], deltas, flags, protocols, grouping)
