"""What a reader must know about a group's numbers: reruns ignored, NaN metrics, record notes,
metrics of the task missing from success records, and in-harness baselines it gets no delta
against because they ran under other settings (with the first settings that differ).

Every flag is one row (task, checkpoint, engine, flag) of `flags_frame`, shown by every renderer
in a "Flags" section, so that no averaging or de-duplication happens silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from detco_bench.records import ResultRecord, comparison_differences
from detco_bench.report.aggregate import Group
from detco_bench.report.grouping import Grouping
from detco_bench.report.taxonomy import metric_sort_key
from detco_bench.task_label import TaskLabel
from detco_bench.tasks import find_benchmark

FLAG_COLUMNS = ["task", "checkpoint", "engine", "flag"]
SETTINGS_SHOWN_DIFFERENCES = 3  # settings named in an unpaired-baseline flag (then "and N more")
DIFFERENCE_CHARS = 80  # of each (a list of protocol differences can be long)


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


def unpaired_flag(group: Group, baseline: Group, members: dict[str, list[ResultRecord]]) -> str:
    """``no Δ vs <baseline>: other settings (SOLVER.MAX_ITER: 100 vs 5000; ...)``."""
    mine, theirs = members.get(group.key), members.get(baseline.key)
    differences = comparison_differences(mine[0].config, theirs[0].config) if mine and theirs else []
    shown = "; ".join(d if len(d) <= DIFFERENCE_CHARS else d[:DIFFERENCE_CHARS - 3] + "..."
                      for d in differences[:SETTINGS_SHOWN_DIFFERENCES])
    if len(differences) > SETTINGS_SHOWN_DIFFERENCES:
        shown += f"; and {len(differences) - SETTINGS_SHOWN_DIFFERENCES} more"
    return (f"no Δ vs {baseline.label}: it ran under other settings ({shown or 'comparison hashes differ'}); "
            "a delta would mix the checkpoints with the settings")


def flags_frame(groups: Sequence[Group], records: Sequence[ResultRecord], grouping: Grouping,
                unpaired: Sequence[tuple[Group, Group]] = ()) -> pd.DataFrame:
    """One row per flag of every group, in the groups' order; `unpaired`: the (group, baseline)
    pairs without a delta because their settings differ (`deltas.unpaired_baselines`)."""
    members: dict[str, list[ResultRecord]] = {}
    for r in records:
        if r.run_id not in grouping.superseded:
            members.setdefault(grouping.key[r.run_id], []).append(r)
    no_delta: dict[str, list[str]] = {}
    for g, b in unpaired:
        no_delta.setdefault(g.key, []).append(unpaired_flag(g, b, members))
    rows = [(g.task, g.label, g.engine, flag) for g in groups
            for flag in [*group_flags(g, members.get(g.key, []), grouping), *no_delta.get(g.key, [])]]
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)
