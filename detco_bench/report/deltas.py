"""Deltas against the baselines measured in the harness, with their significance and the paper's.

Published baselines disagree with a reproduction by more than the effects being measured (other
code, other hardware, other seeds), so a method is judged against the baselines run in the same
harness. A baseline group is one whose records are tagged as an in-harness baseline
(``detco-bench run --baselines``: random init, ``LABEL:PATH``, ``PATH``, whatever its method
label), or one of the paper's baseline methods (random init, supervised, MoCo v2). Every other
group gets a delta against every baseline group on the same task label and engine; baselines are
compared with each other in the paper's order (supervised vs random init, MoCo v2 vs both).

A delta compares checkpoints only when both groups ran under the same settings, so a pair needs
equal *comparison hashes* (`detco_bench.records.comparison_hash`: the settings without the
checkpoint's own labels). A pair of other settings (another schedule, batch, ``--opts``) gets no
delta: `unpaired_baselines` lists it and the report flags it, rather than showing a number that
mixes the checkpoints' difference with the settings' difference.

For each (group, baseline group, metric) the delta of the means, and when both sides have >= 2
seeds its 95% confidence interval and Welch p-value (`significance`); beside it the paper's
published delta for the same method / baseline pair, where the reference has both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from detco_bench.report.aggregate import Group
from detco_bench.report.match import RefEntry, match_reference
from detco_bench.report.significance import DeltaStat, welch_deltas
from detco_bench.report.taxonomy import method_sort_key, metric_sort_key

#: Methods whose measured groups are baselines even untagged (records made by ``transfer
#: --method supervised``...), in the order the paper compares against them.
HARNESS_BASELINES = ("random", "supervised", "mocov2")


@dataclass(frozen=True)
class HarnessDelta:
    """`group` minus `baseline` (same task, engine and settings) on one metric; `paper`: the reference's
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


def is_baseline(group: Group) -> bool:
    """Tagged as an in-harness baseline, or one of the paper's baseline methods."""
    return group.baseline or group.method in HARNESS_BASELINES


def _compares(group: Group, baseline: Group) -> bool:
    """Whether `group` gets a delta against `baseline` (same task and engine assumed): a method
    against every baseline; a baseline against the paper's baselines ranked before its own
    method (supervised vs random init; MoCo v2 vs both)."""
    if baseline.key == group.key or not is_baseline(baseline):
        return False
    if not is_baseline(group):
        return True
    return (group.method in HARNESS_BASELINES and baseline.method in HARNESS_BASELINES
            and method_sort_key(baseline.method) < method_sort_key(group.method))


def _candidates(groups: Sequence[Group]) -> list[tuple[Group, Group]]:
    """Every (group, baseline) pair on the same task and engine that `_compares`, in the groups'
    order, the paper's baselines first (random init, supervised, MoCo v2), then tagged ones."""
    baselines = sorted((b for b in groups if is_baseline(b)), key=lambda b: method_sort_key(b.method))
    return [(g, b) for g in groups for b in baselines
            if b.task == g.task and b.engine == g.engine and _compares(g, b)]


def unpaired_baselines(groups: Sequence[Group]) -> list[tuple[Group, Group]]:
    """The (group, baseline) pairs that get no delta because they ran under other settings."""
    return [(g, b) for g, b in _candidates(groups) if g.comparison_hash != b.comparison_hash]


def harness_deltas(groups: Sequence[Group], refs: dict[str, list[RefEntry]]) -> list[HarnessDelta]:
    """Every group's deltas against every measured baseline group it is compared with (see the
    module docstring) under the same settings, per shared metric, in the groups' order."""
    found: list[tuple[Group, Group, str, float | None, str]] = []
    for g, b in _candidates(groups):
        if g.comparison_hash != b.comparison_hash:
            continue
        entries = refs.get(g.task, [])
        mine = _reference_row(entries, g.method, g.epochs, g.engine)
        theirs = _reference_row(entries, b.method, b.epochs, g.engine)
        note = "" if g.protocol == b.protocol else f"protocols differ ({g.protocol} vs {b.protocol})"
        for metric in sorted(set(g.mean) & set(b.mean), key=metric_sort_key):
            paper = None
            if mine is not None and theirs is not None and metric in mine.values and metric in theirs.values:
                paper = mine.values[metric] - theirs.values[metric]
            found.append((g, b, metric, paper, note))
    stats = welch_deltas([_sides(g, b, metric) for g, b, metric, _, _ in found])
    return [HarnessDelta(g, b, metric, stat, paper, note)
            for (g, b, metric, paper, note), stat in zip(found, stats, strict=True)]
