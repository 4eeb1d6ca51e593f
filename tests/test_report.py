"""The report: reference file vs the paper's Markdown, exact tables, --check, outputs, CLI errors."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from detco_bench import report as rep
from detco_bench.cli import app
from detco_bench.errors import UserError
from detco_bench.records import CheckpointInfo, ResultRecord, write_record
from detco_bench.reference import default_spread, load_reference, reference_dir

REPO = Path(__file__).resolve().parent.parent
REF_DIR = REPO / "detco_bench" / "references"
PAPER_MD = REF_DIR / "detco_paper_tables.md"
PAPER_CSV = REF_DIR / "paper.csv"

PROV = {
    "versions": {"torch": "2.14.1", "torchvision": "0.29.1", "detectron2": "0.6", "detco_bench": "0.1.0"},
    "git_commit": "0123456789abcdef0123456789abcdef01234567", "device": "cuda:0 NVIDIA H100",
    "hostname": "node1", "wall_clock_s": 3600.0,
    "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T01:00:00+00:00",
}
SHA = {"supervised": "b" * 64, "mocov2": "c" * 64, "detco": "a" * 64}
EPOCHS = {"supervised": 90, "mocov2": 200, "detco": 200}


def record(method: str, task: str, metrics: dict, seed: int = 0, engine: str = "detectron2",
           epochs: int | None | str = "default", **kw) -> ResultRecord:
    ep = EPOCHS.get(method) if epochs == "default" else epochs
    return ResultRecord.create(
        task=task, engine=engine, metrics=metrics, seed=seed,
        checkpoint=CheckpointInfo(f"/ck/{method}.pth", SHA.get(method), method, ep),
        config=kw.pop("config", {"task": task, "seed": seed}), provenance=PROV, **kw)


def fixture_records() -> list[ResultRecord]:
    return [
        record("supervised", "coco_fpn_1x", {"bbox/AP": 38.8, "bbox/AP50": 59.5}, seed=0),
        record("supervised", "coco_fpn_1x", {"bbox/AP": 39.0, "bbox/AP50": 59.7}, seed=1),
        record("mocov2", "coco_fpn_1x", {"bbox/AP": 39.0, "bbox/AP50": 59.4}, seed=0),
        record("detco", "coco_fpn_1x", {"bbox/AP": 40.0, "bbox/AP50": 60.5}, seed=0),
        record("detco", "coco_fpn_1x", {"bbox/AP": 39.6, "bbox/AP50": 60.1}, seed=1),
        # the built-in engine: never compared with the paper's detectron2 numbers
        record("detco", "voc_c4_24k", {"bbox/AP": 50.0, "bbox/AP50": 75.0, "bbox/AP75": 52.0},
               engine="torchvision"),
    ]


def write_fixture_store(folder: Path) -> Path:
    """`fixture_records` written into `folder` (the store of this module's tests and others')."""
    for r in fixture_records():
        write_record(folder, r)
    return folder


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_fixture_store(tmp_path / "runs")


# --------------------------------------------------------------------------- reference file

BOX = ["bbox/AP", "bbox/AP50", "bbox/AP75"]
MASK = ["segm/AP", "segm/AP50", "segm/AP75"]
METHODS = {"random init": "random", "supervised": "supervised", "MoCo v2": "mocov2", "DetCo": "detco",
           "DetCo+AA": "detco_aa"}
DEFAULT_EPOCHS = {"random": "", "supervised": "90"}
SCHEDULES = {"12k": "12k", "1x (90k)": "1x", "2x (180k)": "2x"}


def parse_paper_markdown(text: str) -> dict[tuple[str, str, str, str, str], str]:
    """(method, pretrain_epochs, task, engine, metric) -> value, for every number of the paper tables
    that maps to a task (an implementation independent of how paper.csv was made)."""
    tables: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif title and line.startswith("|") and not line.startswith("|---"):
            tables[title].append([c.strip() for c in line.strip().strip("|").split("|")])
    out: dict[tuple[str, str, str, str, str], str] = {}

    def put(method: str, epochs: str | None, task: str, metric: str, value: str,
            engine: str = "detectron2") -> None:
        if value == "-":
            return
        ep = DEFAULT_EPOCHS.get(method, "200") if epochs is None else epochs
        key = (method, ep, task, engine, metric)
        assert key not in out, key
        out[key] = value

    def table(prefix: str) -> list[list[str]]:
        (rows,) = [rows for t, rows in tables.items() if t.startswith(prefix)]
        return rows[1:]  # drop the header row

    for prefix, family in (("COCO Mask R-CNN R50-C4", "coco_c4"), ("COCO Mask R-CNN R50-FPN", "coco_fpn")):
        for sched, method, *vals in table(prefix):
            for metric, v in zip(BOX + MASK, vals, strict=True):
                put(METHODS[method], None, f"{family}_{SCHEDULES[sched]}", metric, v)
    for sched, method, *vals in table("COCO RetinaNet"):
        for metric, v in zip(BOX, vals, strict=True):
            put(METHODS[method], None, f"retinanet_{SCHEDULES[sched]}", metric, v)
    for method, *vals in table("COCO Keypoint"):
        for metric, v in zip(["keypoints/AP", "keypoints/AP50", "keypoints/AP75"], vals, strict=True):
            put(METHODS[method], None, "keypoint_fpn_2x", metric, v)
    for method, epochs, *vals in table("PASCAL VOC07+12"):
        for metric, v in zip(BOX, vals, strict=True):
            put(METHODS[method], "" if epochs == "-" else epochs, "voc_c4_24k", metric, v)
    for method, ap, ap50, miou in table("Cityscapes"):
        put(METHODS[method], None, "cityscapes_inst_fpn", "segm/AP", ap)
        put(METHODS[method], None, "cityscapes_inst_fpn", "segm/AP50", ap50)
        put(METHODS[method], None, "cityscapes_sem", "sem_seg/mIoU", miou)
    for method, epochs, top1, top5, svm in table("ImageNet-1k linear"):
        put(METHODS[method], epochs, "linear_protocol", "top1", top1, "builtin-linear")
        put(METHODS[method], epochs, "linear_protocol", "top5", top5, "builtin-linear")
        put(METHODS[method], epochs, "voc07_svm", "mAP", svm, "builtin-linear")
    for method, *vals in table("COCO DensePose"):
        for metric, v in zip(["densepose/AP", "densepose/AP50", "densepose/AP75"], vals, strict=True):
            put(METHODS[method], None, "densepose_fpn", metric, v)
    rows = table("Semi-supervised COCO")
    header = [r for t, r in tables.items() if t.startswith("Semi-supervised")][0][0]
    detector_task = {"Mask R-CNN FPN": "coco_fpn_12k", "RetinaNet": "retinanet_12k"}
    for detector, subset, *cells in rows:
        for name, cell in zip(header[2:], cells, strict=True):
            for metric, v in zip(BOX, [c.strip() for c in cell.split("/")], strict=True):
                put(METHODS[name], None, f"{detector_task[detector]}@{subset}", metric, v)
    return out


def read_paper_csv() -> list[dict[str, str]]:
    with PAPER_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


def test_paper_markdown_is_the_shared_copy() -> None:
    shared = Path("/work/shared/reference/detco_paper_tables.md")
    if not shared.exists():
        pytest.skip("the shared reference folder is not mounted here")
    assert PAPER_MD.read_text() == shared.read_text()


def test_paper_csv_matches_the_markdown_exactly() -> None:
    expected = parse_paper_markdown(PAPER_MD.read_text())
    got = {(r["method"], r["pretrain_epochs"], r["task"], r["engine"], r["metric"]): r["value"]
           for r in read_paper_csv()}
    assert len(got) == len(read_paper_csv()), "duplicate reference rows"
    assert got == expected
    assert len(got) == 320


@pytest.mark.parametrize(
    ("method", "epochs", "task", "metric", "value"),
    [
        ("random", "", "coco_c4_12k", "bbox/AP", 7.9),
        ("random", "", "coco_c4_1x", "segm/AP", 29.3),
        ("detco_aa", "200", "coco_c4_2x", "segm/AP75", 38.2),
        ("supervised", "90", "coco_fpn_1x", "bbox/AP", 38.9),
        ("detco", "200", "coco_fpn_2x", "bbox/AP75", 45.6),
        ("mocov2", "200", "retinanet_12k", "bbox/AP50", 36.9),
        ("detco", "200", "keypoint_fpn_2x", "keypoints/AP", 67.2),
        ("mocov2", "800", "voc_c4_24k", "bbox/AP75", 64.0),
        ("detco", "100", "voc_c4_24k", "bbox/AP", 57.4),
        ("detco", "200", "cityscapes_inst_fpn", "segm/AP50", 63.2),
        ("supervised", "90", "cityscapes_sem", "sem_seg/mIoU", 74.6),
        ("detco", "200", "linear_protocol", "top5", 88.5),
        ("mocov2", "200", "coco_fpn_12k@10%", "bbox/AP75", 24.8),
        ("detco", "200", "retinanet_12k@1%", "bbox/AP", 8.8),
    ],
)
def test_reference_spot_checks(method: str, epochs: str, task: str, metric: str, value: float) -> None:
    ref = load_reference("paper")
    row = ref[(ref.method == method) & (ref.task == task) & (ref.metric == metric)
              & (ref.pretrain_epochs.map(lambda x: "" if pd.isna(x) else str(x)) == epochs)]
    assert len(row) == 1
    assert row.value.iloc[0] == value
    assert f" {value:.1f} " in PAPER_MD.read_text()


def test_reference_spreads_and_methods() -> None:
    ref = load_reference("paper")
    assert set(ref.method) == {"random", "supervised", "mocov2", "detco", "detco_aa"}
    voc = ref[ref.task == "voc_c4_24k"].groupby("metric").spread.unique()
    assert {m: list(v) for m, v in voc.items()} == {"bbox/AP": [0.2], "bbox/AP50": [0.2], "bbox/AP75": [0.4]}
    for r in read_paper_csv():  # every spread in the file is the documented default
        assert float(r["spread"]) == default_spread(r["task"], r["metric"]), r
    assert default_spread("coco_fpn_1x", "bbox/AP") == 0.3
    assert default_spread("coco_fpn_12k@1%", "bbox/AP75") == 1.0
    assert default_spread("cityscapes_sem", "sem_seg/mIoU") == 0.5
    assert default_spread("linear_protocol", "top1") == 0.2
    assert (ref[ref.task != "linear_protocol"].query("task != 'voc07_svm'").engine == "detectron2").all()


def test_default_spread_follows_the_task_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The family and schedule come from `tasks.TASKS`, not from the name's prefix."""
    import dataclasses

    from detco_bench import tasks

    assert default_spread("retinanet_12k.synthetic", "bbox/AP") == 0.5  # 12k iterations: short schedule
    assert default_spread("keypoint_fpn_2x", "keypoints/AP75") == 0.6
    assert default_spread("cityscapes_inst_fpn+opts", "segm/AP") == 0.8
    assert default_spread("voc07_svm", "mAP") == 0.2
    # a task registered under a new name is read by its family and schedule
    voc = dataclasses.replace(tasks.TASKS["voc_c4_24k"], name="pascal_c4")
    short = dataclasses.replace(tasks.TASKS["coco_fpn_1x"], name="my_fpn", max_iter=6000)
    monkeypatch.setitem(tasks.TASKS, "pascal_c4", voc)
    monkeypatch.setitem(tasks.TASKS, "my_fpn", short)
    assert default_spread("pascal_c4", "bbox/AP75") == 0.4
    assert default_spread("my_fpn", "bbox/AP") == 0.5


def test_smoke_reference_loads_the_measured_smoke_suite() -> None:
    assert (reference_dir() / "smoke.csv").read_text().startswith("method,pretrain_epochs,task")
    ref = load_reference("smoke")
    assert len(ref) > 0 and (ref.spread > 0).all()
    # Smoke references never use the paper's plain task names: they are not the protocol.
    assert set(ref.task) <= {"coco_fpn_1x.synthetic+opts", "linear_fast.imagenet-4classes",
                             "linear_knn.imagenet-4classes"}
    assert set(ref.engine) <= {"torchvision", "detectron2", "builtin-linear"}


def test_reference_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown reference 'nope'"):
        load_reference("nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("method,task,metric,value\ndetco,coco_fpn_1x,bbox/AP,40\n")
    with pytest.raises(UserError, match="missing column"):
        load_reference(bad)
    bad.write_text("method,task,engine,metric,value\ndetco,coco_fpn_1x,detectron2,bbox/AP,forty\n")
    with pytest.raises(UserError, match="not a number"):
        load_reference(bad)
    bad.write_text("method,task,engine,metric,value\n" + "detco,coco_fpn_1x,detectron2,bbox/AP,40\n" * 2)
    with pytest.raises(UserError, match="duplicate"):
        load_reference(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text("method,task,engine,metric,value\ndetco,voc_c4_24k,torchvision,bbox/AP75,40\n")
    df = load_reference(ok)
    assert df.spread.tolist() == [0.4] and df.attrs["name"] == "ok"


# --------------------------------------------------------------------------- exact tables

EXPECTED_SUMMARY = """\
label,task,engine,metric,mean,std,n
Supervised 90ep [bbbbbbbb],coco_fpn_1x,detectron2,bbox/AP,38.9,0.141,2
Supervised 90ep [bbbbbbbb],coco_fpn_1x,detectron2,bbox/AP50,59.6,0.141,2
MoCo v2 200ep [cccccccc],coco_fpn_1x,detectron2,bbox/AP,39.0,,1
MoCo v2 200ep [cccccccc],coco_fpn_1x,detectron2,bbox/AP50,59.4,,1
DetCo 200ep [aaaaaaaa],coco_fpn_1x,detectron2,bbox/AP,39.8,0.283,2
DetCo 200ep [aaaaaaaa],coco_fpn_1x,detectron2,bbox/AP50,60.3,0.283,2
DetCo 200ep [aaaaaaaa],voc_c4_24k,torchvision,bbox/AP,50.0,,1
DetCo 200ep [aaaaaaaa],voc_c4_24k,torchvision,bbox/AP50,75.0,,1
DetCo 200ep [aaaaaaaa],voc_c4_24k,torchvision,bbox/AP75,52.0,,1
"""

EXPECTED_FPN = """\
| task | row | engine | n | bbox/AP | bbox/AP50 | bbox/AP75 | segm/AP | segm/AP50 | segm/AP75 |
|---|---|---|---:|---:|---:|---:|---:|---:|---:|
| coco_fpn_1x | Random init (paper) | detectron2 |  | 31.0 | 49.5 | 33.2 | 28.5 | 46.8 | 30.4 |
| coco_fpn_1x | Supervised 90ep (paper) | detectron2 |  | 38.9 | 59.6 | 42.7 | 35.4 | 56.5 | 38.1 |
| coco_fpn_1x | MoCo v2 200ep (paper) | detectron2 |  | 38.9 | 59.4 | 42.4 | 35.5 | 56.5 | 38.1 |
| coco_fpn_1x | DetCo 200ep (paper) | detectron2 |  | 39.5 | 60.3 | 43.1 | 35.9 | 56.9 | 38.6 |
| coco_fpn_1x | DetCo+AA 200ep (paper) | detectron2 |  | 40.1 | 61.0 | 43.9 | 36.4 | 58.0 | 38.9 |
| coco_fpn_1x | Supervised 90ep [bbbbbbbb] | detectron2 | 2 | 38.9 ± 0.14 | 59.6 ± 0.14 | - | - | - | - |
| coco_fpn_1x | MoCo v2 200ep [cccccccc] | detectron2 | 1 | 39.0 | 59.4 | - | - | - | - |
| coco_fpn_1x | Δ vs Supervised 90ep [bbbbbbbb] | detectron2 |  | +0.1 | -0.2 | - | - | - | - |
| coco_fpn_1x | DetCo 200ep [aaaaaaaa] | detectron2 | 2 | 39.8 ± 0.28 | 60.3 ± 0.28 | - | - | - | - |
| coco_fpn_1x | Δ vs Supervised 90ep [bbbbbbbb] | detectron2 |  | +0.9 | +0.7 | - | - | - | - |
| coco_fpn_1x | Δ vs MoCo v2 200ep [cccccccc] | detectron2 |  | +0.8 | +0.9 | - | - | - | - |
"""

EXPECTED_VOC = """\
| task | row | engine | n | bbox/AP | bbox/AP50 | bbox/AP75 |
|---|---|---|---:|---:|---:|---:|
| voc_c4_24k | Random init (paper) | detectron2 |  | 33.8 | 60.2 | 33.1 |
| voc_c4_24k | Supervised 90ep (paper) | detectron2 |  | 53.5 | 81.3 | 58.8 |
| voc_c4_24k | MoCo v2 200ep (paper) | detectron2 |  | 57.0 | 82.4 | 63.6 |
| voc_c4_24k | MoCo v2 800ep (paper) | detectron2 |  | 57.4 | 82.5 | 64.0 |
| voc_c4_24k | DetCo 100ep (paper) | detectron2 |  | 57.4 | 82.5 | 63.9 |
| voc_c4_24k | DetCo 200ep (paper) | detectron2 |  | 57.8 | 82.6 | 64.2 |
| voc_c4_24k | DetCo 800ep (paper) | detectron2 |  | 58.2 | 82.7 | 65.0 |
| voc_c4_24k | DetCo 200ep [aaaaaaaa] | torchvision | 1 | 50.0 | 75.0 | 52.0 |
"""


def test_exact_summary_and_tables(store: Path) -> None:
    r = rep.build_report([store])
    assert len(r.records) == 6 and r.skipped == [] and len(r.groups) == 4
    summary = r.summary[["label", "task", "engine", "metric", "mean", "std", "n"]].round(3)
    assert summary.to_csv(index=False) == EXPECTED_SUMMARY
    assert [t.key for t in r.tables] == ["coco_fpn", "voc"]
    assert rep.frame_to_markdown(r.tables[0].to_frame(), right=["n", *r.tables[0].metrics]) == EXPECTED_FPN
    assert rep.frame_to_markdown(r.tables[1].to_frame(), right=["n", *r.tables[1].metrics]) == EXPECTED_VOC
    # delta colours follow the paper: >= +0.5 green (up); the terminal / HTML / LaTeX use them
    deltas = [row for row in r.tables[0].rows if row.kind == "delta"]
    assert [rep.delta_direction(d.values["bbox/AP"]) for d in deltas] == ["flat", "up", "up"]
    assert rep.delta_direction(-0.5) == "down"


def test_measured_baseline_falls_back_to_paper(tmp_path: Path) -> None:
    write_record(tmp_path, record("detco", "retinanet_1x", {"bbox/AP": 38.4}))
    table = rep.build_report([tmp_path]).tables[0].to_frame()
    assert table[table.row.str.startswith("Δ")][["row", "bbox/AP"]].values.tolist() == [
        ["Δ vs Supervised 90ep (paper)", "+1.0"], ["Δ vs MoCo v2 200ep (paper)", "+1.2"]]


# --------------------------------------------------------------------------- --check


def check_table(r: rep.Report) -> list[tuple]:
    t = r.check.table
    return list(zip(t.checkpoint, t.task, t.metric, t.status, strict=True))


def test_check_passes_and_engine_not_comparable(store: Path) -> None:
    r = rep.build_report([store], check=True)
    rows = check_table(r)
    assert ("DetCo 200ep [aaaaaaaa]", "coco_fpn_1x", "bbox/AP", "pass") in rows
    assert [s for c, t, m, s in rows if t == "voc_c4_24k"] == ["not comparable"] * 3
    assert sum(s == "missing" for *_, s in rows) == 12  # AP75 + segm/* not measured
    assert not r.check.failed and r.check.compared == 6
    assert r.check.summary_line() == ("check (reference=paper, k=2): 6 pass, 0 FAIL, 3 not comparable, "
                                      "0 ambiguous, 12 missing")


def test_check_threshold(tmp_path: Path) -> None:
    # paper DetCo coco_fpn_1x bbox/AP 39.5, spread 0.3: k=2 threshold 38.9 (inclusive)
    write_record(tmp_path / "ok", record("detco", "coco_fpn_1x", {"bbox/AP": 38.9}))
    write_record(tmp_path / "bad", record("detco", "coco_fpn_1x", {"bbox/AP": 38.85}, seed=1))
    assert check_table(rep.build_report([tmp_path / "ok"], check=True))[0][3] == "pass"
    r = rep.build_report([tmp_path / "bad"], check=True)
    assert r.check.failed and r.check.table.note[0] == "below 39.5 - 2 x 0.3"
    assert not rep.build_report([tmp_path / "bad"], check=True, k=3).check.failed
    # the mean over seeds is what is checked: (38.9 + 38.85) / 2 < 38.9
    assert rep.build_report([tmp_path], check=True).check.failed


def test_check_epochs_matching(tmp_path: Path) -> None:
    write_record(tmp_path / "a", record("detco", "voc_c4_24k", {"bbox/AP": 58.0}, epochs=800))
    write_record(tmp_path / "b", record("detco", "voc_c4_24k", {"bbox/AP": 58.0}, epochs=None))
    write_record(tmp_path / "c", record("random", "voc_c4_24k", {"bbox/AP": 33.5}, epochs=None))
    t = rep.build_report([tmp_path / "a"], check=True).check.table
    assert (t.reference[0], t.status[0]) == (58.2, "pass")            # against the 800-epoch row
    t = rep.build_report([tmp_path / "b"], check=True).check.table
    assert t.status[0] == "ambiguous" and "100, 200, 800" in t.note[0]
    t = rep.build_report([tmp_path / "c"], check=True).check.table
    assert (t.reference[0], t.threshold[0], t.status[0]) == (33.8, pytest.approx(33.4), "pass")


runner = CliRunner()


def test_cli_check_exit_codes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", str(store), "--check", "--format", "csv", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "check (reference=paper, k=2): 6 pass, 0 FAIL" in res.stdout
    check = pd.read_csv(out / "check.csv")
    assert set(check.status) == {"pass", "not comparable", "missing"}

    write_record(store, record("detco", "coco_fpn_1x", {"bbox/AP": 30.0}, seed=2))  # mean drops to 36.5
    res = runner.invoke(app, ["report", str(store), "--check", "-f", "csv", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "check failed: 1 metric(s)" in res.stderr
    # much worse numbers from another engine are "not comparable", never a failure
    tv = tmp_path / "tv"
    write_record(tv, record("detco", "coco_fpn_1x", {"bbox/AP": 1.0}, engine="torchvision"))
    # (nothing compared fails unless --allow-empty: see test_report_significance.py)
    res = runner.invoke(app, ["report", str(tv), "--check", "--allow-empty", "-f", "csv", "--out", str(out)])
    assert res.exit_code == 0 and "not comparable" in pd.read_csv(out / "check.csv").status.tolist()
    assert "no reference metrics to compare" in res.stderr


def test_cli_check_reference_file_and_smoke(store: Path, tmp_path: Path) -> None:
    ref = tmp_path / "mine.csv"
    ref.write_text("method,pretrain_epochs,task,schedule,engine,metric,value,spread,source\n"
                   "detco,200,voc_c4_24k,24k,torchvision,bbox/AP,51.0,0.2,smoke\n")
    res = runner.invoke(app, ["report", str(store), "--check", "--reference", str(ref), "-f", "csv",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 1  # 50.0 < 51.0 - 2 x 0.2
    res = runner.invoke(app, ["report", str(store), "--check", "--reference", str(ref), "--k", "5",
                              "-f", "csv", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0
    res = runner.invoke(app, ["report", str(store), "--check", "--reference", "smoke", "--allow-empty", "-f",
                              "csv", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0
    # The fixture records are not smoke-suite tasks: nothing to compare, which --check says loudly.
    assert "warning: no reference metrics to compare (reference 'smoke':" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "nope"], "unknown reference 'nope'"),
        (["--format", "pdf"], "unknown format 'pdf'"),
        (["--k", "-1"], "--k must be >= 0"),
    ],
)
def test_cli_bad_input_exit_2(store: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["report", str(store), *args])
    assert res.exit_code == 2
    assert message in res.stderr
    assert "Traceback" not in res.output


def test_cli_missing_path_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2
    assert "error: no such file or folder" in res.stderr


# --------------------------------------------------------------------------- robustness


def test_malformed_records_are_skipped_with_a_warning(store: Path, tmp_path: Path) -> None:
    (store / "corrupt.record.json").write_text('{"schema": "detco-bench.result", "schema_ver')
    partial = fixture_records()[0].to_dict()
    del partial["metrics"]
    (store / "partial.record.json").write_text(json.dumps(partial))
    future = fixture_records()[0].to_dict() | {"schema_version": 7}
    (store / "future.record.json").write_text(json.dumps(future))
    running = record("detco", "coco_fpn_1x", {}, status="running")
    failed = record("detco", "coco_fpn_1x", {"bbox/AP": 1.0}, status="failed", error="CUDA OOM")
    write_record(store, running)
    write_record(store, failed)
    out = tmp_path / "o"
    res = runner.invoke(app, ["report", str(store), "-f", "md,csv", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "warning: skipped 3 record file(s)" in res.stderr
    assert "corrupt.record.json: corrupt JSON" in res.stderr
    assert "partial.record.json: missing field 'metrics'" in res.stderr
    assert "future.record.json: unsupported schema_version 7" in res.stderr
    r = rep.build_report([store])
    assert len(r.records) == 6 and {x.status for x in r.excluded} == {"running", "failed"}
    # failed / running runs are not aggregated: the tables are those of the clean store
    assert rep.frame_to_markdown(r.tables[0].to_frame(), right=["n", *r.tables[0].metrics]) == EXPECTED_FPN
    md = (out / "report.md").read_text()
    assert "## Skipped records" in md and "## Runs not aggregated" in md and "CUDA OOM" in md
    assert len(pd.read_csv(out / "skipped.csv")) == 3


def test_empty_store(tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(tmp_path), "--check", "--allow-empty", "-f", "terminal,md", "--out",
                              str(tmp_path / "o")])
    assert res.exit_code == 0
    assert "no successful result records" in res.stderr
    assert "no reference metrics to compare" in res.stderr


# --------------------------------------------------------------------------- outputs


def test_all_outputs(store: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "train"
    run_dir.mkdir()
    lines = [json.dumps({"step": i, "loss": 2.0 - 0.1 * i, "loss/cls": 1.0 - 0.01 * i}) for i in range(10)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:5] + ["not json", "{}"] + lines[5:]) + "\n")
    write_record(store, record("detco", "coco_fpn_1x", {"bbox/AP": 39.8, "bbox/AP50": 60.3}, seed=2,
                               artifacts={"metrics_log": str(run_dir / "metrics.jsonl")}))
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", str(store), "--out", str(out), "--check", "--provenance"])
    assert res.exit_code == 0, res.output
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["check.csv", "deltas.csv", "plots/deltas_vs_supervised.png", "plots/training_curves.png",
                     "report.html", "report.md", "report.tex", "runs.csv", "summary.csv"]
    for name in names:
        assert f"wrote {out / name}" in res.stdout
    assert "COCO Mask R-CNN R50-FPN" in res.stdout and "Δ vs Supervised" in res.stdout  # terminal
    for png in out.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "<link" not in page and 'src="http' not in page and "<style>" in page
    assert 'class="num up"' in page
    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\up{+0.9}" in tex and r"coco\_fpn\_1x" in tex
    md = (out / "report.md").read_text()
    assert "## Check" in md and "## Provenance" in md and "![training_curves.png]" in md
    runs = pd.read_csv(out / "runs.csv")
    assert {"torch", "detectron2", "git_commit", "config_hash", "checkpoint_sha256", "device",
            "wall_clock_s"} <= set(runs.columns)
    assert runs.git_commit.iloc[0] == PROV["git_commit"] and len(runs) == 7
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.device) == {"cuda:0 NVIDIA H100"} and "wall_clock_s_mean" in summary.columns


def test_metrics_log_parsing(tmp_path: Path) -> None:
    log = tmp_path / "metrics.json"  # detectron2 style: iteration / total_loss
    log.write_text('{"iteration": 19, "total_loss": 1.5, "loss_cls": 0.5, "lr": 0.02}\n'
                   '{"iteration": 39, "total_loss": 1.2, "loss_cls": 0.4}\n{"broken"\n')
    assert rep.read_metrics_log(log) == {"total_loss": [(19.0, 1.5), (39.0, 1.2)],
                                         "loss_cls": [(19.0, 0.5), (39.0, 0.4)]}
    r = record("detco", "coco_fpn_1x", {"bbox/AP": 1.0}, config={"output_dir": str(tmp_path)})
    assert rep.find_metrics_log(r) == log


def test_parse_formats() -> None:
    assert rep.parse_formats("markdown, tex,png") == ["md", "latex", "png"]
    assert rep.parse_formats(["csv", "csv,html"]) == ["csv", "html"]
    assert rep.parse_formats("all") == list(rep.FORMATS)
    with pytest.raises(ValueError):
        rep.parse_formats("docx")


def test_scale_benchmark_runs_small(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_scale", REPO / "benchmarks" / "report_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = time.perf_counter()
    timings = mod.run(300, tmp_path)
    assert timings["records"] == 300 and timings["skipped"] == 0
    assert time.perf_counter() - t0 < 10
