"""Aggregation that counts what it claims: groups by settings hash, n = distinct seeds, reruns
flagged, NaN metrics never averaged away."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_report import PROV, record

from detco_bench import report as rep
from detco_bench.records import ResultRecord, read_record, settings_config, settings_hash, write_record
from detco_bench.records.settings import BOOKKEEPING_KEYS


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real transfer plans (nothing runs): their record configs are what engines write."""
    from detco_bench.transfer.planner import plan_transfer

    tmp = tmp_path_factory.mktemp("plans")

    def plan(name: str, seed: int, **kw: object) -> dict:
        kw.setdefault("device", "cpu")
        return plan_transfer(kw.pop("task", "coco_fpn_12k"), None, tmp / name, data_root_dir=tmp / "datasets",
                             results_dir=tmp / "r", engine="torchvision", seed=seed, **kw).record_config()

    return {
        "s0": plan("a", 0, subset="1%"), "s1": plan("b", 1, subset="1%", subset_seed=1),
        "short": plan("c", 0, subset="1%", opts=["SOLVER.MAX_ITER", "100"]),
        "eight": plan("d", 0, subset="1%", device="cuda", gpus=8, launcher="slurm"),
    }


def test_settings_hash_ignores_seed_folders_and_paths(plans: dict) -> None:
    s0, s1 = plans["s0"], plans["s1"]
    assert s0["SEED"] != s1["SEED"] and s0["OUTPUT_DIR"] != s1["OUTPUT_DIR"]
    assert s0["DATASETS"]["TRAIN"] != s1["DATASETS"]["TRAIN"]  # the subset (and its name) follows the seed
    assert settings_hash(s0) == settings_hash(s1)
    cfg = settings_config(s0)
    assert "SEED" not in cfg and "OUTPUT_DIR" not in cfg and "WEIGHTS" not in cfg["MODEL"]
    assert cfg["DATASETS"]["TRAIN"] == ["coco_2017_train_subset1pct_seed*"]
    assert "subset_seed" not in cfg["DETCO_BENCH"] and "adaptations" not in cfg["DETCO_BENCH"]
    assert all("json_file" not in d and "image_root" not in d for d in cfg["DETCO_BENCH"]["datasets"].values())
    assert s0["SEED"] == 0 and "SEED" in s0  # the record's own config is untouched


def test_settings_hash_keeps_what_changes_the_measurement(plans: dict) -> None:
    base = settings_hash(plans["s0"])
    assert settings_hash(plans["short"]) != base   # --opts schedule
    assert settings_hash(plans["eight"]) != base   # 8 GPUs: another batch, synchronized BN
    assert settings_hash({"lr": 0.1, "seed": 1, "data": "/a"}) == settings_hash({"lr": 0.1, "seed": 2, "data": "/b"})
    assert settings_hash({"lr": 0.1}) != settings_hash({"lr": 0.2})


def test_linear_record_config_drops_seed_and_paths() -> None:
    # the shape detco_bench.linear writes: asdict(LinearConfig) + checkpoint / data / dataset...
    def cfg(seed: int, root: str) -> dict:
        return {"mode": "protocol", "epochs": 100, "lr": 30.0, "seed": seed, "workers": 8,
                "checkpoint": f"{root}/ck.pth", "data": f"{root}/imagenet", "dataset": "imagenet",
                "classes": 1000, "arch": "resnet50", "checkpoint_format": "detco-bench"}
    assert settings_hash(cfg(0, "/a")) == settings_hash(cfg(1, "/b"))
    assert settings_hash(cfg(0, "/a")) != settings_hash({**cfg(0, "/a"), "epochs": 90})


def test_bookkeeping_keys_follow_the_transfer_protocol() -> None:
    from detco_bench.transfer.protocol import BOOKKEEPING_KEYS as PROTOCOL_BOOKKEEPING

    assert set(PROTOCOL_BOOKKEEPING) <= set(BOOKKEEPING_KEYS)


def test_reruns_of_one_seed_count_once(tmp_path: Path) -> None:
    for i in range(7):  # seven reruns of seed 0: the latest (finished last) counts
        prov = dict(PROV, finished_at=f"2025-01-0{i + 1}T01:00:00+00:00")
        write_record(tmp_path, ResultRecord.create(**{**_args("detco", 39.0 + 0.1 * i, 0), "provenance": prov}))
    write_record(tmp_path, record("detco", "coco_fpn_1x", {"bbox/AP": 40.0}, seed=1))
    r = rep.build_report([tmp_path])
    (g,) = r.groups
    assert g.n == 2 and g.count["bbox/AP"] == 2 and g.reruns_ignored == 6
    assert g.mean["bbox/AP"] == pytest.approx((39.6 + 40.0) / 2)
    assert r.summary.reruns_ignored.tolist() == [6]
    assert r.flags.flag.tolist()[0] == "6 reruns of seed 0 ignored (the latest is kept)"
    frame = r.tables[0].to_frame()
    assert frame.loc[frame.row == "DetCo 200ep [aaaaaaaa]", "n"].tolist() == ["2"]


def _args(method: str, ap: float, seed: int, **cfg: object) -> dict:
    r = record(method, "coco_fpn_1x", {"bbox/AP": ap}, seed=seed, config={"task": "coco_fpn_1x", "seed": seed, **cfg})
    return dict(task=r.task, engine=r.engine, metrics=r.metrics, checkpoint=r.checkpoint, seed=r.seed,
                config=r.config, provenance=r.provenance)


def test_different_settings_are_different_groups(tmp_path: Path) -> None:
    task = "coco_fpn_1x.synthetic+opts"
    for it in (500, 1000):
        for seed in (0, 1):
            write_record(tmp_path, record("detco", task, {"bbox/AP": it / 100 + seed}, seed=seed, engine="torchvision",
                                          config={"SEED": seed, "OUTPUT_DIR": f"/o/{it}/{seed}",
                                                  "SOLVER": {"MAX_ITER": it}}))
    write_record(tmp_path, record("supervised", task, {"bbox/AP": 1.0}, engine="torchvision"))
    r = rep.build_report([tmp_path])
    detco = [g for g in r.groups if g.method == "detco"]
    assert len(detco) == 2 and [g.n for g in detco] == [2, 2]
    assert sorted(g.mean["bbox/AP"] for g in detco) == [5.5, 10.5]
    labels = sorted(g.label for g in detco)
    assert all(label.startswith("DetCo 200ep [aaaaaaaa] cfg=") for label in labels) and labels[0] != labels[1]
    # a checkpoint with one setting keeps its plain label
    assert [g.label for g in r.groups if g.method == "supervised"] == ["Supervised 90ep [bbbbbbbb]"]


def test_nan_metric_is_flagged_not_averaged(tmp_path: Path) -> None:
    write_record(tmp_path, record("detco", "coco_fpn_1x", {"bbox/AP": 39.6, "bbox/AP50": 60.0}, seed=0))
    write_record(tmp_path, record("detco", "coco_fpn_1x", {"bbox/AP": math.nan, "bbox/AP50": 60.2}, seed=1,
                                  notes=["bbox/AP: the evaluator returned NaN (no predictions?)"]))
    back = read_record(next(tmp_path.glob("*.record.json")))
    assert back.status == "success"
    r = rep.build_report([tmp_path], check=True)
    (g,) = r.groups
    assert math.isnan(g.mean["bbox/AP"]) and g.nan["bbox/AP"] == 1 and g.count["bbox/AP"] == 2
    assert g.mean["bbox/AP50"] == pytest.approx(60.1)
    frame = r.tables[0].to_frame()
    assert frame.loc[frame.row == "DetCo 200ep [aaaaaaaa]", "bbox/AP"].tolist() == ["NaN!"]
    assert frame.loc[frame.row.str.startswith("Δ vs Supervised"), "bbox/AP"].tolist() == ["NaN!"]
    t = r.check.table.set_index("metric")
    assert t.loc["bbox/AP", "status"] == "FAIL" and t.loc["bbox/AP", "note"].startswith("NaN in 1 of 2 seed(s)")
    assert t.loc["bbox/AP50", "status"] == "pass" and r.check.failed
    flags = r.flags.flag.tolist()
    assert "bbox/AP is NaN in 1 of 2 seed(s): not averaged (no predictions?)" in flags
    assert "seed 1: bbox/AP: the evaluator returned NaN (no predictions?)" in flags


def test_cli_nan_fails_the_check(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from detco_bench.cli import app

    write_record(tmp_path / "runs", record("detco", "coco_fpn_1x", {"bbox/AP": math.nan}, notes=["no predictions"]))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--check", "-f", "csv", "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "FAIL coco_fpn_1x DetCo 200ep [aaaaaaaa] (detectron2) bbox/AP: NaN in 1 of 1 seed(s)" in res.stderr
