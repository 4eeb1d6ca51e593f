"""Deltas against the baselines measured in the harness, with their significance and the paper's.

Published baselines disagree with a reproduction by more than the effects being measured (other
code, other hardware, other seeds), so a method is judged against the baselines run in the same
harness: every measured group of a baseline method (random init, supervised, MoCo v2) on the same
task label and engine. For each (group, baseline group, metric) the delta of the means, and when
both sides have >= 2 seeds its 95% confidence interval and Welch p-value (`significance`); beside
it the paper's published delta for the same method / baseline pair, where the reference has both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from detco_bench.report.aggregate import Group
from detco_bench.report.match import RefEntry, match_reference
from detco_bench.report.significance import DeltaStat, welch_deltas
from detco_bench.report.taxonomy import method_sort_key, metric_sort_key

#: Methods whose measured groups are baselines, in the order the paper compares against them.
HARNESS_BASELINES = ("random", "supervised", "mocov2")


@dataclass(frozen=True)
class HarnessDelta:
    """`group` minus `baseline` (same task and engine) on one metric; `paper`: the reference's
    delta for the same pair of methods (None when it lacks either row); `note`: caveats."""

    group: Group
    baseline: Group
    metric: str
    stat: DeltaStat
    paper: float | None = None
    note: str = ""

    @property
    def task(self) -> str:
        return self.group.task

    @property
    def engine(self) -> str:
        return self.group.engine


def _reference_row(entries: Sequence[RefEntry], method: str, epochs: int | None, engine: str) -> RefEntry | None:
    """The reference row of a method for a delta: same engine preferred (the paper has one), exact
    epochs before an epoch-less row; None when missing or ambiguous."""
    rows, ambiguous = match_reference(entries, method, epochs)
    if ambiguous or not rows:
        return None
    rows = sorted(rows, key=lambda e: (e.engine != engine, e.epochs is None))
    return rows[0]


def _sides(group: Group, baseline: Group, metric: str) -> tuple[list[float], list[float]]:
    """The seeds' values of both groups, or the means when a group has no values (made from a
    summary alone: the delta is then untested)."""
    a, b = group.values.get(metric), baseline.values.get(metric)
    if a and b:
        return a, b
    return [group.mean[metric]], [baseline.mean[metric]]


def group_deltas(group: Group, baseline: Group, metrics: Sequence[str]) -> dict[str, DeltaStat]:
    """The deltas of two groups on `metrics`, tested on the seeds' values when the groups carry them."""
    return dict(zip(metrics, welch_deltas([_sides(group, baseline, m) for m in metrics]), strict=True))


def harness_deltas(groups: Sequence[Group], refs: dict[str, list[RefEntry]]) -> list[HarnessDelta]:
    """Every group's deltas against every measured baseline group that ranks before its method
    (supervised vs random init; MoCo v2 vs both; DetCo and others vs all three), per shared
    metric, in the groups' order."""
    baselines: dict[tuple[str, str, str], list[Group]] = {}
    for b in groups:
        if b.method in HARNESS_BASELINES:
            baselines.setdefault((b.method, b.task, b.engine), []).append(b)
    found: list[tuple[Group, Group, str, float | None, str]] = []
    for g in groups:
        for base_method in HARNESS_BASELINES:
            if method_sort_key(base_method) >= method_sort_key(g.method):
                continue
            for b in baselines.get((base_method, g.task, g.engine), []):
                entries = refs.get(g.task, [])
                mine = _reference_row(entries, g.method, g.epochs, g.engine)
                theirs = _reference_row(entries, base_method, b.epochs, g.engine)
                note = "" if g.protocol == b.protocol else f"protocols differ ({g.protocol} vs {b.protocol})"
                for metric in sorted(set(g.mean) & set(b.mean), key=metric_sort_key):
                    paper = None
                    if mine is not None and theirs is not None and metric in mine.values \
                            and metric in theirs.values:
                        paper = mine.values[metric] - theirs.values[metric]
                    found.append((g, b, metric, paper, note))
    stats = welch_deltas([_sides(g, b, metric) for g, b, metric, _, _ in found])
    return [HarnessDelta(g, b, metric, stat, paper, note)
            for (g, b, metric, paper, note), stat in zip(found, stats, strict=True)]
