"""`detco-bench run` reuses a job's record only for the settings asked now, refuses a folder of
another suite without --force (also when checked again under the lock), and reports its own
records only."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

import detco_bench.pipeline.runner as runner_module
from detco_bench.cli import app
from detco_bench.errors import UserError
from detco_bench.linear import preset_config, run_linear
from detco_bench.pipeline import Job, PipelineConfig, run_pipeline
from detco_bench.pipeline.baselines import Subject
from detco_bench.pipeline.reuse import record_differences
from detco_bench.pipeline.runner import run_report
from detco_bench.records import CheckpointInfo, ResultRecord, collect_provenance, read_record, sha256_file
from tests.conftest import save_random_resnet
from tests.test_linear import _easy_imagefolder

cli = CliRunner()
FLAGS = ("--epochs", "3", "--batch-size", "16", "--image-size", "32", "--workers", "0")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reuse")
    return save_random_resnet(root / "r18.pth"), _easy_imagefolder(root / "easy", per_class_train=4,
                                                                    per_class_val=3)


def _cfg(ck: Path, data: Path, suite: str = "linear:knn", flags: tuple[str, ...] = FLAGS) -> PipelineConfig:
    return PipelineConfig(checkpoint=str(ck), suite=suite, linear_data=str(data), device="cpu", linear_flags=flags)


def test_a_changed_suite_is_refused_without_force(setup: tuple[Path, Path], tmp_path: Path) -> None:
    ck, data = setup
    out = tmp_path / "p"
    run_pipeline(_cfg(ck, data), out, log=lambda m: None)
    state = (out / "pipeline.json").read_text()
    result = cli.invoke(app, ["run", "--checkpoint", str(ck), "--out", str(out), "--suite", "linear:knn,linear:fast",
                              "--linear-data", str(data), "--device", "cpu", "--linear-flags", " ".join(FLAGS),
                              "--no-report"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "other settings (suite)" in lines[0] and "--force" in lines[0], lines
    assert (out / "pipeline.json").read_text() == state, "a refused rerun changes nothing"
    assert not (out / "jobs" / "linear_fast-s0").exists()


def test_settings_are_checked_again_under_the_lock(setup: tuple[Path, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Another pipeline writes the folder between the first check and the lock: refused then."""
    ck, data = setup
    out = tmp_path / "p"
    other = _cfg(ck, data, suite="linear:fast")
    real_lock = runner_module.folder_lock

    def lock_after_another_pipeline(folder: Path):  # type: ignore[no-untyped-def]
        (Path(folder) / "pipeline.json").write_text(json.dumps({"config": other.__dict__, "jobs": {}}))
        return real_lock(folder)

    monkeypatch.setattr(runner_module, "folder_lock", lock_after_another_pipeline)
    with pytest.raises(UserError, match=r"other settings \(suite\)"):
        run_pipeline(_cfg(ck, data), out, log=lambda m: None)
    assert not (out / "jobs").exists()


def test_a_job_is_skipped_only_when_its_record_has_the_requested_settings(setup: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    ck, data = setup
    out = tmp_path / "p"
    first = run_pipeline(_cfg(ck, data), out, log=lambda m: None)
    record = first["jobs"]["linear_knn-s0"]["record"]
    # pipeline.json lost: what was asked before is known from the record alone.
    (out / "pipeline.json").unlink()
    logs: list[str] = []
    run_pipeline(_cfg(ck, data), out, log=logs.append)
    assert any("[skip] linear_knn-s0" in x for x in logs), logs
    (out / "pipeline.json").unlink()
    changed = _cfg(ck, data, flags=(*FLAGS, "--knn-k", "3"))
    with pytest.raises(UserError, match=r"linear_knn-s0: its record .* other settings \(knn_k\)"):
        run_pipeline(changed, out, log=lambda m: None)
    assert not (out / "pipeline.json").exists(), "refused before anything is written"
    logs.clear()
    again = run_pipeline(changed, out, log=logs.append, force=True)
    assert any("[run] linear_knn-s0" in x for x in logs), logs
    assert read_record(again["jobs"]["linear_knn-s0"]["record"]).config["knn_k"] == 3
    assert again["jobs"]["linear_knn-s0"]["record"] != record
    assert list((out / "jobs").glob("linear_knn-s0.replaced-*")), "the old folder is kept aside"


def _transfer_record(tmp_path: Path, ck: Path, **meta: object) -> ResultRecord:
    base = {"task": "coco_fpn_1x", "opts": ["SOLVER.MAX_ITER", "5"], "device": "cpu",
            "datasets": {"coco_2017_train": {"image_root": str(tmp_path / "d" / "coco" / "train2017")}}}
    return ResultRecord.create(
        task="coco_fpn_1x+opts", engine="torchvision", metrics={"bbox/AP": 1.0},
        checkpoint=CheckpointInfo(str(ck), sha256_file(ck), "detco"), seed=0,
        config={"SOLVER": {"MAX_ITER": 5}, "DETCO_BENCH": base | meta},
        provenance=collect_provenance("cpu", 1.0, datetime.now(timezone.utc)))


def test_transfer_record_differences(setup: tuple[Path, Path], tmp_path: Path) -> None:
    ck, _ = setup
    cfg = PipelineConfig(checkpoint=str(ck), suite="coco_fpn_1x", engine="torchvision", device="cpu",
                         data_root=str(tmp_path / "d"), extra_opts=("SOLVER.MAX_ITER", "5"))
    job, subject, sha = Job("transfer", "coco_fpn_1x"), Subject("", str(ck), None), sha256_file(ck)
    record = _transfer_record(tmp_path, ck)
    assert record_differences(record, job, cfg, tmp_path, subject, sha) == []
    assert record_differences(record, Job("transfer", "coco_fpn_1x", seed=1), cfg, tmp_path, subject, sha) == ["seed"]
    assert record_differences(record, job, cfg, tmp_path, subject, "0" * 64) == ["checkpoint"]
    assert record_differences(record, job, cfg, tmp_path, Subject("", str(ck), "mocov2"), sha) == ["method"]
    other = PipelineConfig(**{**cfg.__dict__, "extra_opts": ("SOLVER.MAX_ITER", "6"), "device": "cuda",
                              "data_root": str(tmp_path / "elsewhere")})
    assert record_differences(record, job, other, tmp_path, subject, sha) == ["opts", "device", "data_root"]
    assert record_differences(_transfer_record(tmp_path, ck, task="retinanet_1x"), job, cfg, tmp_path, subject,
                              sha) == ["task"]


def test_the_report_reads_the_pipelines_records_only(setup: tuple[Path, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ck, data = setup
    store = tmp_path / "store"  # the default results store holds an unrelated run
    run_linear(ck, data, store / "foreign", preset_config("knn", image_size=32, workers=0), dataset_name="foreign",
               show_progress=False)
    monkeypatch.setenv("DETCO_BENCH_RESULTS", str(store))
    root = tmp_path / "p"
    root.mkdir()
    assert run_report(root, formats="md") == (1, None), "no records, no jobs folder: nothing to report"
    assert not (root / "report").exists()
    assert "nothing to report" in capsys.readouterr().out
    run_linear(ck, data, root / "records" / "mine", preset_config("knn", image_size=32, workers=0),
               dataset_name="mine", show_progress=False)
    code, written = run_report(root, formats="md")
    assert code == 0 and written == root / "report"
    text = (root / "report" / "report.md").read_text()
    assert "linear_knn.mine" in text and "foreign" not in text
    assert os.environ["DETCO_BENCH_RESULTS"] == str(store)


def test_run_names_a_report_only_when_one_was_written(setup: tuple[Path, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job fails (no record): `run` says there is nothing to report and names no report path."""
    ck, data = setup
    monkeypatch.setattr(runner_module, "_check_linear_settings", lambda *args: None)  # let the bad flag reach the job
    result = cli.invoke(app, ["run", "--checkpoint", str(ck), "--out", str(tmp_path / "p"), "--suite", "linear:knn",
                              "--linear-data", str(data), "--device", "cpu", "--max-retries", "0",
                              "--linear-flags", " ".join((*FLAGS, "--knn-k", "0"))])
    assert result.exit_code == 1, result.output
    assert "nothing to report" in result.stdout
    assert "report:" not in result.stdout and not (tmp_path / "p" / "report").exists()
