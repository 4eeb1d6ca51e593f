"""`detco-bench run`: suites, skipping finished jobs, retries, a real kill, Slurm submission."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detco_bench.cli import app
from detco_bench.errors import UserError
from detco_bench.pipeline import Job, PipelineConfig, job_command, parse_suite, run_pipeline, successful_record
from detco_bench.records import read_record, scan_records
from tests.conftest import save_random_resnet
from tests.test_linear import _easy_imagefolder

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
LINEAR_FAST = ("--epochs", "3", "--batch-size", "16", "--image-size", "32", "--workers", "0")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipe")
    data = _easy_imagefolder(root / "easy", per_class_train=4, per_class_val=3)
    return save_random_resnet(root / "r18.pth"), data


def test_parse_suite() -> None:
    jobs = parse_suite("coco_fpn_1x,linear:knn", seeds=2)
    assert [j.name for j in jobs] == ["coco_fpn_1x-s0", "linear_knn-s0", "coco_fpn_1x-s1", "linear_knn-s1"]
    assert {j.task for j in parse_suite("paper", 1) if j.kind == "transfer"} >= {"coco_fpn_1x", "voc_c4_24k",
                                                                                  "cityscapes_sem"}
    with pytest.raises(UserError, match="unknown task|no_such_task"):
        parse_suite("no_such_task", 1)
    with pytest.raises(UserError, match="unknown linear mode"):
        parse_suite("linear:svm", 1)
    with pytest.raises(UserError, match="--seeds"):
        parse_suite("smoke", 0)


def test_job_commands_carry_seed_engine_and_opts(tmp_path: Path) -> None:
    cfg = PipelineConfig(checkpoint="ck.pth", suite="smoke", engine="torchvision", data_root="/d", linear_data="/l",
                         extra_opts=("SOLVER.MAX_ITER", "5"))
    cmd = job_command(Job("transfer", "coco_fpn_1x", seed=3, opts=("SOLVER.BASE_LR", "0.01")), cfg, tmp_path)
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[cmd.index("--engine") + 1] == "torchvision"
    assert cmd[cmd.index("--opts") + 1:] == ["SOLVER.BASE_LR", "0.01", "SOLVER.MAX_ITER", "5"]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "jobs" / "coco_fpn_1x-s3")
    lin = job_command(Job("linear", "knn", seed=1), cfg, tmp_path)
    assert lin[lin.index("--checkpoint") + 1] == "ck.pth" and "--resume" in lin


def _linear_suite(ck: Path, data: Path, seeds: int = 1) -> PipelineConfig:
    cfg = PipelineConfig(checkpoint=str(ck), suite="linear:knn,linear:fast", seeds=seeds, linear_data=str(data),
                         device="cpu")
    return cfg


def test_runs_jobs_then_skips_them(setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    ck, data = setup
    import detco_bench.pipeline as pipeline

    monkeypatch.setattr(pipeline.runner, "parse_suite", lambda s, n: [Job("linear", "knn", 0, LINEAR_FAST)])
    logs: list[str] = []
    state = run_pipeline(_linear_suite(ck, data), tmp_path / "p", log=logs.append)
    assert state["jobs"]["linear_knn-s0"]["status"] == "success"
    first = Path(state["jobs"]["linear_knn-s0"]["record"])
    assert read_record(first).task == "linear_knn.easy"
    assert len(list((tmp_path / "p" / "weights" / "cache" / "converted").glob("*.torchvision.pth"))) == 1
    mtime = first.stat().st_mtime_ns
    logs.clear()
    run_pipeline(_linear_suite(ck, data), tmp_path / "p", log=logs.append)
    assert any("[skip] linear_knn-s0" in line for line in logs) and not any("[run]" in x for x in logs)
    assert first.stat().st_mtime_ns == mtime
    # The closing report (a linear-only suite has no transfer records folder).
    assert pipeline.make_report(tmp_path / "p", formats="md") == 0
    assert "linear_knn.easy" in (tmp_path / "p" / "report" / "report.md").read_text()


def test_failed_job_is_retried_then_reported(setup: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ck, data = setup
    import detco_bench.pipeline as pipeline

    # An invalid flag makes the job exit 2 every time (the pipeline's own check of the flags, which
    # would refuse it before the first job, is switched off: this is about a job that fails).
    monkeypatch.setattr(pipeline.runner, "parse_suite", lambda s, n: [Job("linear", "knn", 0, ("--knn-k", "0"))])
    monkeypatch.setattr(pipeline.runner, "_check_linear_settings", lambda *args: None)
    logs: list[str] = []
    cfg = _linear_suite(ck, data)
    cfg.max_retries = 2
    state = run_pipeline(cfg, tmp_path / "p", log=logs.append)
    entry = state["jobs"]["linear_knn-s0"]
    assert entry["status"] == "failed" and entry["attempts"] == 3 and entry["exit_code"] == 2
    assert sum("[run] linear_knn-s0" in x for x in logs) == 3


def test_real_kill_then_rerun_does_not_redo_finished_jobs(setup: tuple[Path, Path], tmp_path: Path) -> None:
    ck, data = setup
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "detco_bench.cli", "run", "--checkpoint", str(ck), "--out", str(out),
           "--suite", "linear:knn", "--seeds", "3", "--linear-data", str(data), "--device", "cpu", "--no-report",
           "--linear-flags", "--image-size 32 --workers 0"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if list((out / "jobs" / "linear_knn-s0").glob("*.record.json")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and the job it is running, mid-flight
    proc.wait()
    first = list((out / "jobs" / "linear_knn-s0").glob("*.record.json"))
    assert first, "the first job should have finished before the kill"
    first_id = read_record(first[0]).run_id
    state = json.loads((out / "pipeline.json").read_text())  # the state file survived the kill intact
    assert state["plan"] == ["linear_knn-s0", "linear_knn-s1", "linear_knn-s2"]

    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[skip] linear_knn-s0" in result.stdout
    records, skipped = scan_records([out / "jobs"])
    assert not skipped, skipped
    assert sorted(r.seed for r in records) == [0, 1, 2]
    assert read_record(first[0]).run_id == first_id
    assert all(successful_record(out, Job("linear", "knn", s)) for s in range(3))


def test_slurm_launcher_submits_one_job_per_task(setup: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    ck, data = setup
    monkeypatch.setenv("DETCO_BENCH_SUBMITIT_CLUSTER", "local")  # submitit runs the jobs as local processes
    cfg = _linear_suite(ck, data, seeds=1)
    cfg.launcher = "slurm"
    import detco_bench.pipeline as pipeline

    monkeypatch.setattr(pipeline.runner, "parse_suite", lambda s, n: [Job("linear", "knn", 0, LINEAR_FAST),
                                                               Job("linear", "knn", 1, LINEAR_FAST)])
    state = run_pipeline(cfg, tmp_path / "p", log=lambda m: None)
    ids = [state["jobs"][f"linear_knn-s{s}"]["job_id"] for s in (0, 1)]
    assert all(ids) and ids[0] != ids[1]
    deadline = time.time() + 120
    while time.time() < deadline and not all(successful_record(tmp_path / "p", Job("linear", "knn", s))
                                              for s in (0, 1)):
        time.sleep(0.5)
    assert all(successful_record(tmp_path / "p", Job("linear", "knn", s)) for s in (0, 1))


@pytest.mark.parametrize("args,message", [
    (["--suite", "nope"], "unknown task"),
    (["--suite", "linear:knn"], "--linear-data"),
    (["--launcher", "pbs", "--suite", "linear:knn", "--linear-data", "x"], "launcher"),
])
def test_run_bad_input_exits_2(setup: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    ck, _ = setup
    result = runner.invoke(app, ["run", "--checkpoint", str(ck), "--out", str(tmp_path / "p"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_run_missing_checkpoint_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_parse_baselines() -> None:
    from detco_bench.pipeline.baselines import parse_baselines

    assert parse_baselines("random, supervised:/a/sup.pth,/b/other.pth") == [
        ("random", None), ("supervised", "/a/sup.pth"), ("", "/b/other.pth")]
    assert parse_baselines(None) == [] and parse_baselines("") == []
    with pytest.raises(UserError, match="twice"):
        parse_baselines("supervised:a.pth,supervised:b.pth")


def test_random_init_baseline_is_deterministic(tmp_path: Path) -> None:
    import torch

    from detco_bench.pipeline.baselines import random_init_checkpoint

    a = random_init_checkpoint("resnet18", tmp_path / "a")
    b = random_init_checkpoint("resnet18", tmp_path / "b")
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    state = torch.get_rng_state()
    random_init_checkpoint("resnet18", tmp_path / "c")
    assert torch.equal(state, torch.get_rng_state())  # the caller's random stream is left alone


def test_baselines_run_the_same_suite(setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    ck, data = setup
    import detco_bench.pipeline as pipeline

    monkeypatch.setattr(pipeline.runner, "parse_suite",
                        lambda s, n, subject="": [Job("linear", "knn", 0, LINEAR_FAST, subject)])
    cfg = _linear_suite(ck, data)
    cfg.baselines = f"random,supervised:{ck}"
    state = run_pipeline(cfg, tmp_path / "p", log=lambda m: None)
    assert state["plan"] == ["linear_knn-s0", "random/linear_knn-s0", "supervised/linear_knn-s0"]
    assert all(job["status"] == "success" for job in state["jobs"].values())
    methods = {name: read_record(job["record"]).checkpoint.method for name, job in state["jobs"].items()}
    assert methods["random/linear_knn-s0"] == "random" and methods["supervised/linear_knn-s0"] == "supervised"
    assert (tmp_path / "p" / "baselines" / "random_resnet18.pth").is_file()
    with pytest.raises(UserError, match="does not exist"):
        cfg.baselines = str(tmp_path / "missing.pth")
        run_pipeline(cfg, tmp_path / "p2", log=lambda m: None)


@pytest.mark.parametrize("args,message", [
    (["--suite", "coco_fpn_1x", "--opts", "SOLVER.MAX_ITR 5", "--device", "cpu"], "did you mean SOLVER.MAX_ITER"),
    (["--suite", "coco_fpn_1x", "--opts", "SOLVER.MAX_ITER", "--device", "cpu"], "odd number"),
    (["--suite", "coco_fpn_1x", "--device", "cpu"], "coco"),  # no dataset there: refused before any job
    (["--suite", "linear:knn", "--linear-data", "x", "--linear-flags", "--epochs many"], "epochs"),
    (["--suite", "linear:knn", "--linear-data", "x", "--linear-flags", "--no-such-flag"], "no-such-flag"),
    (["--suite", "linear:knn", "--linear-data", "x", "--max-retries", "-1"], "--max-retries"),
    (["--suite", "linear:knn", "--linear-data", "x", "--check", "bogusref"], "bogusref"),
])
def test_run_validates_every_job_before_starting(setup: tuple[Path, Path], tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    ck, _ = setup
    result = runner.invoke(app, ["run", "--checkpoint", str(ck), "--out", str(tmp_path / "p"),
                                 "--data-root", str(tmp_path / "nodata"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists(), "nothing is created for a pipeline that cannot start"


def test_changed_settings_are_refused_then_rerun_with_force(setup: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ck, data = setup
    import detco_bench.pipeline as pipeline

    monkeypatch.setattr(pipeline.runner, "parse_suite", lambda s, n, subject="": [Job("linear", "knn", 0, (),
                                                                                        subject)])
    cfg = _linear_suite(ck, data)
    cfg.linear_flags = LINEAR_FAST
    first = run_pipeline(cfg, tmp_path / "p", log=lambda m: None)
    old_record = first["jobs"]["linear_knn-s0"]["record"]
    cfg.linear_flags = (*LINEAR_FAST, "--knn-k", "3")
    with pytest.raises(UserError, match="other settings.*linear_flags"):
        run_pipeline(cfg, tmp_path / "p", log=lambda m: None)
    assert json.loads((tmp_path / "p" / "pipeline.json").read_text())["config"]["linear_flags"] == list(LINEAR_FAST)
    logs: list[str] = []
    again = run_pipeline(cfg, tmp_path / "p", log=logs.append, force=True)
    assert any("[run] linear_knn-s0" in x for x in logs), logs
    assert again["jobs"]["linear_knn-s0"]["record"] != old_record
    assert read_record(again["jobs"]["linear_knn-s0"]["record"]).config["knn_k"] == 3
    assert list((tmp_path / "p" / "jobs").glob("linear_knn-s0.replaced-*")), "the old folder is kept aside"


def test_baseline_jobs_are_tagged_at_the_source(tmp_path: Path) -> None:
    from detco_bench.linear.flags import parse_linear_argv
    from detco_bench.pipeline.baselines import Subject
    from detco_bench.pipeline.jobs import transfer_options

    cfg = PipelineConfig(checkpoint="ck.pth", suite="smoke", engine="torchvision", data_root="/d", linear_data="/l")
    mine = Subject("mine", "/b/mine.pth", "mine")
    transfer, linear = Job("transfer", "coco_fpn_1x", subject="mine"), Job("linear", "knn", subject="mine")
    cmd = job_command(transfer, cfg, tmp_path, mine)
    assert "--baseline" in cmd and cmd[cmd.index("--method") + 1] == "mine"
    assert cmd[cmd.index("--checkpoint") + 1] == "/b/mine.pth"
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "jobs" / "mine" / "coco_fpn_1x-s0")
    lin = job_command(linear, cfg, tmp_path, mine)
    assert "--baseline" in lin and parse_linear_argv(lin[lin.index("linear") + 1:])["baseline"] is True
    # the evaluated checkpoint is no baseline
    assert "--baseline" not in job_command(Job("transfer", "coco_fpn_1x"), cfg, tmp_path)
    assert "--baseline" not in job_command(Job("linear", "knn"), cfg, tmp_path)
    # what the pipeline validates is what the job runs (checkpoint, method and cache included)
    options = transfer_options(transfer, cfg, tmp_path, mine)
    assert [*cmd[cmd.index("transfer") + 1:]] == options.to_argv()
    assert options.baseline and options.cache_dir == tmp_path / "weights" / "cache"


def test_report_has_a_delta_against_every_baseline_run(setup: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--baselines random,mine:PATH,PATH``: each baseline's records are tagged, and the report
    takes the evaluated checkpoint's delta against all three (a plain PATH keeps its checkpoint's
    method, here "unknown" like the evaluated one's)."""
    ck, data = setup
    import detco_bench.pipeline as pipeline
    from detco_bench.report import build_report

    monkeypatch.setattr(pipeline.runner, "parse_suite",
                        lambda s, n, subject="": [Job("linear", "knn", 0, LINEAR_FAST, subject)])
    mine, plain = save_random_resnet(tmp_path / "mine.pth", seed=1), save_random_resnet(tmp_path / "plain.pth", seed=2)
    cfg = _linear_suite(ck, data)
    cfg.baselines = f"random,mine:{mine},{plain}"
    state = run_pipeline(cfg, tmp_path / "p", log=lambda m: None)
    assert all(job["status"] == "success" for job in state["jobs"].values()), state["jobs"]
    tags = {name: read_record(job["record"]).checkpoint.baseline for name, job in state["jobs"].items()}
    assert tags == {"linear_knn-s0": False, "random/linear_knn-s0": True, "mine/linear_knn-s0": True,
                    "baseline3/linear_knn-s0": True}
    report = build_report([tmp_path / "p" / "jobs"], reference=None)
    evaluated = next(g for g in report.groups if not g.baseline)
    against = {d.baseline.method for d in report.deltas if d.group is evaluated and d.metric == "knn_top1"}
    assert against == {"random", "mine", "unknown"}


def test_python_m_detco_bench_is_the_cli_and_help_does_not_import_torch(tmp_path: Path) -> None:
    """``python -m detco_bench`` runs the CLI; its --help stays light (no torch, no report or
    pipeline modules): the commands defer their heavy imports."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "detco_bench", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "transfer" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "detco_bench.cli" in imported
    assert not {m for m in imported if m == "torch" or m.startswith(("torch.", "detco_bench.report",
                                                                       "detco_bench.pipeline"))}
    bad = subprocess.run([sys.executable, "-m", "detco_bench", "report", str(tmp_path / "none")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
