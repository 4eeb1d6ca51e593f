"""Deltas vs in-harness baselines: only under the same settings, against every baseline a
pipeline ran (tagged at the source), and in the demo's report."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_report import PROV

from detco_bench import report as rep
from detco_bench.records import (
    CheckpointInfo,
    ResultRecord,
    comparison_differences,
    comparison_hash,
    settings_hash,
    write_record,
)


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Real transfer record configs (nothing runs) of one task at two schedules."""
    from detco_bench.transfer.planner import plan_transfer

    tmp = tmp_path_factory.mktemp("plans")

    def plan(name: str, max_iter: int) -> dict[str, Any]:
        return plan_transfer("coco_fpn_1x", None, tmp / name, data_root_dir=tmp / "datasets", results_dir=tmp / "r",
                             engine="torchvision", device="cpu",
                             opts=["SOLVER.MAX_ITER", str(max_iter)]).record_config()

    return {"short": plan("a", 100), "long": plan("b", 5000)}


def _as_checkpoint(config: dict[str, Any], weights: str, fmt: str, arch: str) -> dict[str, Any]:
    """`config` as a run of another checkpoint file would record it (its weights and labels)."""
    out = copy.deepcopy(config)
    out["MODEL"]["WEIGHTS"] = weights
    out["DETCO_BENCH"].update(checkpoint_format=fmt, checkpoint_arch=arch)
    return out


def _record(method: str, sha: str, task: str, ap: float, seed: int, config: dict[str, Any],
            baseline: bool = False, engine: str = "torchvision") -> ResultRecord:
    return ResultRecord.create(task=task, engine=engine, metrics={"bbox/AP": ap}, seed=seed,
                               checkpoint=CheckpointInfo(f"/ck/{sha}.pth", sha * 64, method, None, baseline),
                               config={**config, "SEED": seed}, provenance=PROV)


def test_comparison_hash_ignores_only_the_checkpoints_own_labels(plans: dict[str, dict[str, Any]]) -> None:
    detco = _as_checkpoint(plans["short"], "/cache/a.pkl", "detco-bench", "resnet50")
    supervised = _as_checkpoint(plans["short"], "/cache/b.pkl", "torchvision", "resnet50")
    assert settings_hash(detco) != settings_hash(supervised)  # another checkpoint: another group
    assert comparison_hash(detco) == comparison_hash(supervised)  # ... but the same settings
    assert comparison_hash(plans["short"]) != comparison_hash(plans["long"])
    assert comparison_hash({**detco, "MODEL": {**detco["MODEL"], "RESNETS": {"DEPTH": 101}}}) != comparison_hash(detco)
    linear = {"mode": "knn", "seed": 0, "arch": "resnet50", "checkpoint_format": "detco-bench", "checkpoint": "/a"}
    assert comparison_hash(linear) == comparison_hash({**linear, "checkpoint_format": "torchvision", "seed": 1,
                                                       "checkpoint": "/b"})
    assert "SOLVER.MAX_ITER: 100 vs 5000" in comparison_differences(plans["short"], plans["long"])


def test_a_baseline_of_other_settings_gets_no_delta_but_a_flag(tmp_path: Path,
                                                               plans: dict[str, dict[str, Any]]) -> None:
    """The audit's case: DetCo at MAX_ITER 100 against supervised at MAX_ITER 5000 (same task label)."""
    task = "coco_fpn_1x+opts"
    for seed in (0, 1):
        write_record(tmp_path, _record("supervised", "b", task, 30.0 + seed, seed,
                                       _as_checkpoint(plans["long"], "/c/b.pkl", "torchvision", "resnet50")))
        write_record(tmp_path, _record("detco", "a", task, 20.0 + seed, seed,
                                       _as_checkpoint(plans["short"], "/c/a.pkl", "detco-bench", "resnet50")))
    r = rep.build_report([tmp_path])
    assert r.deltas == []
    flags = [f for f in r.flags[r.flags.checkpoint == "DetCo [aaaaaaaa]"].flag if f.startswith("no Δ")]
    assert len(flags) == 1 and flags[0].startswith("no Δ vs Supervised [bbbbbbbb]: it ran under other settings (")
    assert "SOLVER.MAX_ITER: 100 vs 5000" in flags[0]
    # the table does not subtract the measured baseline of other settings either
    table = r.tables[0]
    assert not [row for row in table.rows if row.kind == "delta" and row.baseline == "Supervised [bbbbbbbb]"]
    (md,) = rep.write_report(r, tmp_path / "out", ["md"])
    assert "no Δ vs Supervised [bbbbbbbb]" in md.read_text()

    # The same settings (another checkpoint file and format): a delta, no flag.
    for seed in (0, 1):
        write_record(tmp_path, _record("supervised", "c", task, 21.0 + seed, seed,
                                       _as_checkpoint(plans["short"], "/c/c.pkl", "torchvision", "resnet50")))
    r = rep.build_report([tmp_path])
    paired = {(d.group.label, d.baseline.label) for d in r.deltas}
    assert paired == {("DetCo [aaaaaaaa]", "Supervised [cccccccc]")}
    (d,) = r.deltas
    assert d.stat.delta == pytest.approx(-1.0)


def test_every_tagged_baseline_gets_a_delta(tmp_path: Path) -> None:
    """`run --baselines random,supervised:PATH,mine:PATH,PATH`: one delta per baseline, whatever
    its label (the plain PATH's method is the checkpoint's own, here "detco")."""
    cfg = {"mode": "knn", "knn_k": 20}
    task = "linear_knn.easy"
    runs = [("detco", "a", 60.0, False), ("random", "1", 10.0, True), ("supervised", "2", 70.0, True),
            ("mine", "3", 50.0, True), ("detco", "d", 55.0, True)]
    for method, sha, top1, baseline in runs:
        write_record(tmp_path, ResultRecord.create(
            task=task, engine="builtin-linear", metrics={"top1": top1}, seed=0, config=cfg, provenance=PROV,
            checkpoint=CheckpointInfo(f"/ck/{sha}.pth", sha * 64, method, None, baseline)))
    r = rep.build_report([tmp_path])
    evaluated = next(g for g in r.groups if not g.baseline)
    got = {d.baseline.label: d.stat.delta for d in r.deltas if d.group is evaluated}
    assert got == {"Random init [11111111]": pytest.approx(50.0), "Supervised [22222222]": pytest.approx(-10.0),
                   "mine [33333333]": pytest.approx(10.0), "DetCo [dddddddd]": pytest.approx(5.0)}
    # baselines among themselves: only the paper's order (supervised vs random init)
    among = {(d.group.label, d.baseline.label) for d in r.deltas if d.group is not evaluated}
    assert among == {("Supervised [22222222]", "Random init [11111111]")}
    # untagged, "mine" would be just another method: no delta against it
    untagged = tmp_path / "untagged"
    for method, sha, top1, _ in runs:
        write_record(untagged, ResultRecord.create(
            task=task, engine="builtin-linear", metrics={"top1": top1}, seed=0, config=cfg, provenance=PROV,
            checkpoint=CheckpointInfo(f"/ck/{sha}.pth", sha * 64, method, None)))
    plain = rep.build_report([untagged])
    assert not [d for d in plain.deltas if d.baseline.method == "mine"]


def test_demo_report_shows_random_init_and_the_delta_against_it(tmp_path: Path) -> None:
    """Records shaped like `detco-bench demo`'s (the smoke suite on the DetCo smoke checkpoint and
    on the random-init baseline the pipeline tags): the report has the random-init rows and the
    DetCo - random init delta, for the detection task and both linear probes."""
    from detco_bench.pipeline.suites import SMOKE_DETECTION_OPTS

    detection = {"SOLVER": {"MAX_ITER": 100, "IMS_PER_BATCH": 4}, "MODEL": {"WEIGHTS": "/cache/x.pth"},
                 "DETCO_BENCH": {"task": "coco_fpn_1x", "opts": list(SMOKE_DETECTION_OPTS),
                                 "checkpoint_format": "detco-bench", "checkpoint_arch": "resnet18"}}
    probe = {"epochs": 30, "batch_size": 64, "image_size": 64, "aug_copies": 0, "arch": "resnet18",
             "checkpoint_format": "detco-bench"}
    linear = "builtin-linear"
    jobs = [("coco_fpn_1x.synthetic+opts", "torchvision", {"bbox/AP": 0.8, "bbox/AP50": 2.5}, detection),
            ("linear_fast.imagenet-10classes", linear, {"top1": 31.0, "top5": 80.0}, {**probe, "mode": "fast"}),
            ("linear_knn.imagenet-10classes", linear, {"top1": 28.0, "top5": 75.0}, {**probe, "mode": "knn"})]
    for task, engine, metrics, cfg in jobs:
        write_record(tmp_path / "suite" / "records", ResultRecord.create(
            task=task, engine=engine, metrics=metrics, seed=0, config=cfg, provenance=PROV,
            checkpoint=CheckpointInfo("/demo/pretrain/checkpoint.pth", "d" * 64, "detco", 2)))
        random_cfg = copy.deepcopy(cfg)  # the random-init file is a torchvision state dict
        if "DETCO_BENCH" in random_cfg:
            random_cfg["MODEL"]["WEIGHTS"] = "/cache/random.pth"
            random_cfg["DETCO_BENCH"]["checkpoint_format"] = "torchvision"
        else:
            random_cfg["checkpoint_format"] = "torchvision"
        write_record(tmp_path / "suite" / "jobs" / "random", ResultRecord.create(
            task=task, engine=engine, metrics={k: v + 1.5 for k, v in metrics.items()}, seed=0, config=random_cfg,
            provenance=PROV, checkpoint=CheckpointInfo("/demo/suite/baselines/random_resnet18.pth", "e" * 64,
                                                       "random", None, True)))
    r = rep.build_report([tmp_path / "suite" / "records", tmp_path / "suite" / "jobs"], reference="smoke")
    assert {g.task for g in r.groups if g.method == "random" and g.baseline} == {t for t, _, _, _ in jobs}
    got = {(d.task, d.metric): d.stat.delta for d in r.deltas
           if d.group.method == "detco" and d.baseline.method == "random"}
    assert got == {("coco_fpn_1x.synthetic+opts", "bbox/AP"): pytest.approx(-1.5),
                   ("coco_fpn_1x.synthetic+opts", "bbox/AP50"): pytest.approx(-1.5),
                   **{(t, m): pytest.approx(-1.5) for t, _, _, _ in jobs[1:] for m in ("top1", "top5")}}
    rep.write_report(r, tmp_path / "report", ["md"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Random init [eeeeeeee]" in md and "## Δ vs in-harness baselines" in md
    deltas_md = md.split("## Δ vs in-harness baselines", 1)[1]
    assert "| DetCo 2ep [dddddddd] | builtin-linear | Random init [eeeeeeee] | top1 |" in deltas_md
