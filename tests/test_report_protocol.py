"""Protocol fidelity in the report and --check: adapted runs are not the paper's experiment; a check
that compares nothing fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import record
from typer.testing import CliRunner

from detco_bench import report as rep
from detco_bench.cli import app
from detco_bench.records import write_record
from detco_bench.report.check import ADAPTED_NOTE
from detco_bench.report.display import protocol_display_frame

runner = CliRunner()
GOOD = {"bbox/AP": 39.5, "bbox/AP50": 60.3, "bbox/AP75": 43.1, "segm/AP": 35.9, "segm/AP50": 56.9,
        "segm/AP75": 38.6}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Record configs of real plans: one CPU process (adapted) and 8 GPUs through Slurm (exact)."""
    from detco_bench.transfer.planner import plan_transfer

    tmp = tmp_path_factory.mktemp("plans")

    def plan(name: str, **kw: object) -> dict:
        return plan_transfer("coco_fpn_1x", None, tmp / name, data_root_dir=tmp / "datasets",
                             results_dir=tmp / "r", engine="detectron2", **kw).record_config()

    return {"adapted": plan("one", device="cpu"), "exact": plan("eight", device="cuda", gpus=8, launcher="slurm")}


def _store(folder: Path, configs: dict, kind: str) -> Path:
    write_record(folder, record("detco", "coco_fpn_1x", GOOD, config=configs[kind]))
    return folder


def test_one_process_run_is_not_comparable_with_the_paper(configs: dict, tmp_path: Path) -> None:
    store = _store(tmp_path / "runs", configs, "adapted")
    assert configs["adapted"]["DETCO_BENCH"]["protocol"]["world_size"] == 1
    r = rep.build_report([store], check=True)
    assert r.groups[0].protocol == "adapted"
    t = r.check.table
    assert set(t.status) == {"not comparable"} and set(t.note) == {ADAPTED_NOTE} and len(t) == 6
    assert t.reference.tolist()[0] == 39.5 and r.check.compared == 0
    # explicitly allowed: compared like any run
    allowed = rep.build_report([store], check=True, allow_adapted=True).check
    assert allowed.count("pass") == 6 and not allowed.failed
    # the smoke references and a user's file were measured with adapted runs: compared as before
    ref = tmp_path / "mine.csv"
    ref.write_text("method,pretrain_epochs,task,schedule,engine,metric,value,spread,source\n"
                   "detco,200,coco_fpn_1x,1x,detectron2,bbox/AP,39.0,0.3,one-process runs\n")
    assert rep.build_report([store], check=True, reference=ref).check.count("pass") == 1


def test_exact_and_unknown_runs_are_compared(configs: dict, tmp_path: Path) -> None:
    exact = rep.build_report([_store(tmp_path / "e", configs, "exact")], check=True)
    assert exact.groups[0].protocol == "exact" and exact.check.count("pass") == 6
    unknown = tmp_path / "u"
    write_record(unknown, record("detco", "coco_fpn_1x", GOOD))  # no DETCO_BENCH.protocol
    r = rep.build_report([unknown], check=True)
    assert r.groups[0].protocol == "unknown" and r.check.count("pass") == 6


def test_protocol_is_shown(configs: dict, tmp_path: Path) -> None:
    store = _store(tmp_path / "runs", configs, "adapted")
    write_record(store, record("supervised", "coco_fpn_1x", GOOD))
    r = rep.build_report([store])
    frame = r.tables[0].to_frame()
    assert "protocol" in frame.columns
    assert frame.set_index("row").loc["DetCo 200ep [aaaaaaaa]", "protocol"] == "adapted"
    assert frame.set_index("row").loc["Supervised 90ep [bbbbbbbb]", "protocol"] == "unknown"
    p = protocol_display_frame(r).set_index("checkpoint")
    assert p.loc["DetCo 200ep [aaaaaaaa]", "world_size"] == "1"
    assert "SOLVER.IMS_PER_BATCH: 16 -> 2" in p.loc["DetCo 200ep [aaaaaaaa]", "differences"]
    assert p.loc["Supervised 90ep [bbbbbbbb]", "differences"] == "records do not say"
    # a table whose groups all say nothing has no protocol column (see test_report's exact tables)
    assert "protocol" not in rep.build_report([_store_unknown(tmp_path / "u")]).tables[0].to_frame().columns


def _store_unknown(folder: Path) -> Path:
    write_record(folder, record("detco", "coco_fpn_1x", GOOD))
    return folder


def test_cli_check_that_compares_nothing_fails(configs: dict, tmp_path: Path) -> None:
    store = _store(tmp_path / "runs", configs, "adapted")
    out = str(tmp_path / "o")
    res = runner.invoke(app, ["report", str(store), "--check", "-f", "csv", "--out", out])
    assert res.exit_code == 1, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --check compared no metric (reference 'paper'")
    assert "6 not comparable" in errors[0] and "--allow-empty" in errors[0]
    res = runner.invoke(app, ["report", str(store), "--check", "--allow-empty", "-f", "csv", "--out", out])
    assert res.exit_code == 0 and "passes vacuously" in res.stderr
    res = runner.invoke(app, ["report", str(store), "--check", "--allow-adapted", "-f", "csv", "--out", out])
    assert res.exit_code == 0 and "6 pass, 0 FAIL" in res.stdout
    # an empty store or an empty reference: the same one line
    res = runner.invoke(app, ["report", str(tmp_path / "empty"), "--check", "-f", "csv", "--out", out])
    assert res.exit_code == 2  # (a path that does not exist is bad input)
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "empty"), "--check", "-f", "csv", "--out", out])
    assert res.exit_code == 1 and "error: --check compared no metric" in res.stderr
    # without --check nothing changes
    assert runner.invoke(app, ["report", str(store), "-f", "csv", "--out", out]).exit_code == 0
