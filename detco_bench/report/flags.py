"""What a reader must know about a group's numbers: reruns ignored, NaN metrics, record notes,
metrics of the task missing from success records.

Every flag is one row (task, checkpoint, engine, flag) of `flags_frame`, shown by every renderer
in a "Flags" section, so that no averaging or de-duplication happens silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from detco_bench.records import ResultRecord
from detco_bench.report.aggregate import Group
from detco_bench.report.grouping import Grouping
from detco_bench.report.taxonomy import metric_sort_key
from detco_bench.task_label import TaskLabel
from detco_bench.tasks import find_benchmark

FLAG_COLUMNS = ["task", "checkpoint", "engine", "flag"]


def _task_metrics(task: str) -> tuple[str, ...]:
    label = TaskLabel.try_parse(task)
    benchmark = find_benchmark(label.base) if label else None
    return tuple(benchmark.metrics) if benchmark else ()


def group_flags(group: Group, members: Sequence[ResultRecord], grouping: Grouping) -> list[str]:
    """The flags of one group; `members`: its records that count (reruns replaced dropped)."""
    flags = list(grouping.rerun_notes(group.key))
    for metric in sorted(group.nan, key=metric_sort_key):
        if group.nan[metric]:
            flags.append(f"{metric} is NaN in {group.nan[metric]} of {group.count[metric]} seed(s): "
                         "not averaged (no predictions?)")
    notes = dict.fromkeys(f"seed {r.seed}: {note}" for r in sorted(members, key=lambda r: r.seed)
                          for note in r.notes)
    flags.extend(notes)
    missing = [m for m in _task_metrics(group.task) if m not in group.count]
    if missing:
        flags.append(f"task metric(s) not in the records: {', '.join(missing)}")
    return flags


def flags_frame(groups: Sequence[Group], records: Sequence[ResultRecord], grouping: Grouping) -> pd.DataFrame:
    """One row per flag of every group, in the groups' order."""
    members: dict[str, list[ResultRecord]] = {}
    for r in records:
        if r.run_id not in grouping.superseded:
            members.setdefault(grouping.key[r.run_id], []).append(r)
    rows = [(g.task, g.label, g.engine, flag) for g in groups
            for flag in group_flags(g, members.get(g.key, []), grouping)]
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)
