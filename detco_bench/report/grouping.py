"""Which records are seeds of one measurement: groups, their labels, and reruns of one seed.

A group is one checkpoint (by sha256) on one task label with one engine and one *settings hash*
(`detco_bench.records.settings`: the effective config without seed, folders and paths). Runs of
the same checkpoint with different ``--opts``, schedules or world sizes are different groups, so
``n`` and ``mean ± std`` only ever mix seeds of the same settings.

Within a group, ``n`` counts distinct seeds: reruns of one seed are not independent samples, so
the latest run of each seed (finished_at, else started_at) is kept and the others are reported
as ignored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detco_bench.records import ResultRecord
from detco_bench.report.taxonomy import method_label

PROTOCOL_EXACT, PROTOCOL_ADAPTED, PROTOCOL_UNKNOWN = "exact", "adapted", "unknown"
SETTINGS_SHOWN = 6  # hex digits of the settings hash in a label that needs it


def protocol_status(record: ResultRecord) -> str:
    """'exact' / 'adapted' as the transfer planner recorded it; 'unknown' when the record does
    not say (older records, linear probes)."""
    proto = record.protocol
    status = proto.get("protocol") if proto else None
    return status if status in (PROTOCOL_EXACT, PROTOCOL_ADAPTED) else PROTOCOL_UNKNOWN


def checkpoint_label(record: ResultRecord) -> str:
    """``DetCo 200ep [1a2b3c4d]``: method, epochs and the start of the checkpoint's sha256 (its
    file name when it has no hash)."""
    ck = record.checkpoint
    label = method_label(ck.method, ck.pretrain_epochs)
    if ck.sha256:
        return f"{label} [{ck.sha256[:8]}]"
    if ck.path:
        return f"{label} [{Path(ck.path).name}]"
    return label


@dataclass
class Grouping:
    """The groups of a set of records.

    key: run_id -> group key; label: group key -> display label (with ``cfg=<settings hash>``
    only when the same checkpoint has several settings for one task and engine); settings:
    group key -> settings hash; comparison: group key -> comparison hash (the settings without
    the checkpoint's own labels: a method and a baseline pair only when theirs are equal);
    baseline: group key -> whether its records are tagged as an in-harness baseline; superseded:
    run_id -> the run_id of the later rerun of the same seed that replaces it; reruns: group key
    -> {seed: number of runs ignored}."""

    key: dict[str, str] = field(default_factory=dict)
    label: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    comparison: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, bool] = field(default_factory=dict)
    superseded: dict[str, str] = field(default_factory=dict)
    reruns: dict[str, dict[int, int]] = field(default_factory=dict)

    def rerun_notes(self, group: str) -> list[str]:
        """``["2 reruns of seed 0 ignored (the latest is kept)"]`` for a group."""
        return [f"{n} rerun{'s' if n > 1 else ''} of seed {seed} ignored (the latest is kept)"
                for seed, n in sorted(self.reruns.get(group, {}).items())]


def group_records(records: Sequence[ResultRecord]) -> Grouping:
    """Assign every record to its group and mark reruns of a seed that a later run replaces."""
    g = Grouping()
    members: dict[str, list[ResultRecord]] = defaultdict(list)
    settings_of_checkpoint: dict[tuple, set[str]] = defaultdict(set)
    # Equal configs (config_hash is checked against the config on read) have equal settings.
    by_config: dict[str, tuple[str, str]] = {}
    for r in records:
        ck = r.checkpoint
        hashes = by_config.get(r.config_hash)
        if hashes is None:
            hashes = by_config[r.config_hash] = (r.settings_hash, r.comparison_hash)
        settings = hashes[0]
        key = f"{ck.method}|{ck.pretrain_epochs}|{ck.identity}|{r.task}|{r.engine}|{settings[:16]}"
        g.key[r.run_id] = key
        g.settings[key] = settings
        g.comparison[key] = hashes[1]
        g.baseline[key] = g.baseline.get(key, False) or ck.baseline
        members[key].append(r)
        settings_of_checkpoint[(ck.method, ck.pretrain_epochs, ck.identity, r.task, r.engine)].add(settings)
    for key, runs in members.items():
        first = runs[0]
        ck = first.checkpoint
        label = checkpoint_label(first)
        if len(settings_of_checkpoint[(ck.method, ck.pretrain_epochs, ck.identity, first.task,
                                       first.engine)]) > 1:
            label += f" cfg={g.settings[key][:SETTINGS_SHOWN]}"
        g.label[key] = label
        by_seed: dict[int, list[ResultRecord]] = defaultdict(list)
        for r in runs:
            by_seed[r.seed].append(r)
        ignored: Counter[int] = Counter()
        for seed, same in by_seed.items():
            if len(same) < 2:
                continue
            same.sort(key=lambda r: r.finished_sort_key)
            for r in same[:-1]:
                g.superseded[r.run_id] = same[-1].run_id
                ignored[seed] += 1
        if ignored:
            g.reruns[key] = dict(ignored)
    return g
