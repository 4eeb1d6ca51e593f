"""Transfer plans, the CLI, dataset checks, result records, the output folder's state, Slurm
submission and Cityscapes preparation / evaluation, all without detectron2 (engines are faked)."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from detco_bench import engines
from detco_bench.cli import app
from detco_bench.errors import UserError
from detco_bench.records import read_record
from detco_bench.synthetic import CLASS_NAMES, write_synthetic_dataset
from detco_bench.transfer import (
    SlurmSpec,
    TransferPlan,
    apply_scaling,
    describe_plan,
    finish_run,
    plan_transfer,
    prepare_datasets,
    prepare_weights,
    read_state,
    run_transfer,
    weights_cached,
)
from detco_bench.transfer_config import effective_config, get_key
from tests.conftest import save_random_resnet

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root, "all", num_train=8, num_val=4, seed=0, image_size=(96, 96))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_resnet(tmp_path_factory.mktemp("ck") / "resnet18.pth")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


def _plan(
    task: str, checkpoint: Path | None, out: Path, data_root: Path, cache: Path, results: Path, **kw: Any
) -> TransferPlan:
    kw.setdefault("device", "cpu")
    kw.setdefault("engine", "torchvision")
    return plan_transfer(task, checkpoint, out, data_root_dir=data_root, cache_dir=cache, results_dir=results, **kw)


class FakeEngine:
    """Stands in for an engine: records the plans it ran and writes a success record."""

    name = "torchvision"

    def __init__(self, fail: bool = False) -> None:
        self.plans: list[TransferPlan] = []
        self.fail = fail

    def available(self) -> str | None:
        return None

    def config_problems(self, config: dict[str, Any], family: str) -> list[str]:
        return []

    def run(self, plan: TransferPlan) -> Path:
        self.plans.append(plan)
        if self.fail:
            raise RuntimeError("boom")
        return finish_run(plan, {"bbox/AP": 12.5, "bbox/AP50": 30.0}, wall_clock_s=1.5)


# --------------------------------------------------------------------------------------------
# Plans


def test_cpu_plan_adapts_and_records_everything(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path
) -> None:
    plan = _plan("coco_fpn_1x", checkpoint, tmp_path / "out", data_root, cache, results, seed=3)
    assert plan.problems == [] and plan.state["status"] == "new"
    assert plan.world_size == 1 and plan.device == "cpu" and plan.launcher == "local"
    cfg = plan.config
    assert cfg["MODEL"]["DEVICE"] == "cpu"
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "BN" and cfg["MODEL"]["FPN"]["NORM"] == "BN"
    assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 18 and cfg["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64
    assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == len(CLASS_NAMES)  # synthetic data: 4 classes
    assert cfg["MODEL"]["WEIGHTS"] == plan.weights and str(cache) in plan.weights
    assert cfg["SEED"] == 3 and cfg["OUTPUT_DIR"] == str((tmp_path / "out").resolve())
    # Linear scaling rule from 8 GPUs x 2 images to 1 process x 2 images.
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 2
    assert cfg["SOLVER"]["BASE_LR"] == pytest.approx(0.0025)
    assert cfg["SOLVER"]["MAX_ITER"] == 720000 and cfg["SOLVER"]["STEPS"] == [480000, 640000]
    assert cfg["SOLVER"]["WARMUP_ITERS"] == 8000
    assert plan.scaling["rule"] == "linear" and plan.scaling["changes"]["SOLVER.BASE_LR"] == [0.02, 0.0025]
    keys = {a["key"] for a in plan.adaptations}
    assert {
        "MODEL.RESNETS.DEPTH",
        "MODEL.WEIGHTS",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.DEVICE",
        "MODEL.RESNETS.NORM",
        "MODEL.FPN.NORM",
        "SEED",
        "OUTPUT_DIR",
    } <= keys
    assert plan.checkpoint is not None and plan.checkpoint.arch == "resnet18"
    assert plan.checkpoint.format == "torchvision" and len(plan.checkpoint.sha256) == 64
    assert set(plan.datasets) == {"coco_2017_train", "coco_2017_val"}
    assert plan.task_label == "coco_fpn_1x.synthetic" and plan.record_path.parent == results.resolve()
    # JSON round trip (plan.json, and what crosses process boundaries).
    again = TransferPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()
    text = "\n".join(describe_plan(plan))
    assert "linear scaling rule" in text and "ok: every dataset" in text and "command" in text


def test_opts_are_applied_last_and_literally(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path
) -> None:
    plan = _plan(
        "coco_c4_1x",
        None,
        tmp_path / "o",
        data_root,
        cache,
        results,
        opts=["SOLVER.MAX_ITER", "5", "SOLVER.IMS_PER_BATCH", "4"],
    )
    assert plan.config["SOLVER"]["MAX_ITER"] == 5 and plan.config["SOLVER"]["IMS_PER_BATCH"] == 4
    # The steps and warm-up the user did not set follow the new MAX_ITER (720000 -> 5).
    assert plan.config["SOLVER"]["STEPS"] == [3, 4] and plan.config["SOLVER"]["WARMUP_ITERS"] == 0
    assert plan.opts == ["SOLVER.MAX_ITER", "5", "SOLVER.IMS_PER_BATCH", "4"]
    assert plan.checkpoint is None and plan.config["MODEL"]["WEIGHTS"] == ""


@pytest.mark.parametrize(
    "task, world, rule, expect",
    [
        (
            "coco_fpn_1x",
            16,
            "linear",
            {
                "SOLVER.IMS_PER_BATCH": 32,
                "SOLVER.BASE_LR": 0.04,
                "SOLVER.MAX_ITER": 45000,
                "SOLVER.STEPS": [30000, 40000],
                "SOLVER.WARMUP_ITERS": 500,
            },
        ),
        ("coco_fpn_1x", 8, "linear", {"SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.MAX_ITER": 90000}),
        ("coco_fpn_1x", 4, "none", {"SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.MAX_ITER": 90000}),
        (
            "voc_c4_24k",
            2,
            "linear",
            {
                "SOLVER.IMS_PER_BATCH": 4,
                "SOLVER.BASE_LR": 0.005,
                "SOLVER.MAX_ITER": 96000,
                "SOLVER.STEPS": [72000, 88000],
                "SOLVER.WARMUP_ITERS": 400,
            },
        ),
        (
            "cityscapes_inst_fpn",
            1,
            "linear",
            {"SOLVER.IMS_PER_BATCH": 1, "SOLVER.BASE_LR": 0.00125, "SOLVER.MAX_ITER": 192000, "SOLVER.STEPS": [144000]},
        ),
    ],
)
def test_batch_lr_rule(task: str, world: int, rule: str, expect: dict[str, Any]) -> None:
    cfg = effective_config(task)
    info = apply_scaling(cfg, world, rule)
    for key, value in expect.items():
        assert get_key(cfg, key) == (pytest.approx(value) if isinstance(value, float) else value), key
    assert info["rule"] == rule and info["world_size"] == world and info["summary"]
    if world == 8 or rule == "none":
        assert info["changes"] == {}


def test_batch_rule_errors() -> None:
    with pytest.raises(UserError, match="not divisible by 3"):
        apply_scaling(effective_config("coco_fpn_1x"), 3, "none")
    with pytest.raises(UserError, match="unknown --scaling"):
        apply_scaling(effective_config("coco_fpn_1x"), 1, "sqrt")


def test_invalid_launch_settings(data_root: Path, cache: Path, results: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="single process"):
        _plan("coco_fpn_1x", None, tmp_path / "o", data_root, cache, results, gpus=2)
    with pytest.raises(UserError, match="--dist-url"):
        _plan("coco_fpn_1x", None, tmp_path / "o", data_root, cache, results, device="cuda", num_machines=2)
    with pytest.raises(UserError, match="machine-rank"):
        _plan(
            "coco_fpn_1x",
            None,
            tmp_path / "o",
            data_root,
            cache,
            results,
            device="cuda",
            num_machines=2,
            machine_rank=2,
            dist_url="tcp://h:1",
        )
    with pytest.raises(UserError, match="unknown --launcher"):
        _plan("coco_fpn_1x", None, tmp_path / "o", data_root, cache, results, launcher="pbs")
    if not torch.cuda.is_available():
        plan = _plan("coco_fpn_1x", None, tmp_path / "o", data_root, cache, results, device="cuda", gpus=8)
        assert any("no CUDA device" in p for p in plan.problems)


def test_c4_needs_a_bottleneck_resnet(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="bottleneck ResNet"):
        _plan("voc_c4_24k", checkpoint, tmp_path / "o", data_root, cache, results)


def test_synthetic_metadata_for_keypoints_and_voc(data_root: Path, cache: Path, results: Path, tmp_path: Path) -> None:
    from detco_bench.synthetic import KEYPOINT_OKS_SIGMAS

    kp = _plan("keypoint_fpn_2x", None, tmp_path / "kp", data_root, cache, results)
    assert kp.config["MODEL"]["ROI_KEYPOINT_HEAD"]["NUM_KEYPOINTS"] == 4
    assert kp.config["TEST"]["KEYPOINT_OKS_SIGMAS"] == list(KEYPOINT_OKS_SIGMAS)
    meta = kp.datasets["keypoints_coco_2017_train"].meta
    assert meta["keypoint_names"] == ["top", "right", "bottom", "left"]
    assert meta["keypoint_flip_map"] == [["left", "right"]]
    voc = _plan("voc_c4_24k", None, tmp_path / "voc", data_root, cache, results)
    assert voc.config["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 4
    assert voc.datasets["voc_2007_test"].meta["thing_classes"] == list(CLASS_NAMES)
    assert voc.datasets["voc_2012_trainval"].year == "2012" and voc.problems == []


def test_subset_plan_and_json(data_root: Path, cache: Path, results: Path, tmp_path: Path) -> None:
    plan = _plan("coco_fpn_12k", None, tmp_path / "sub", data_root, cache, results, subset="10", seed=4)
    assert plan.task_label == "coco_fpn_12k@10%.synthetic" and plan.subset == "10%" and plan.subset_seed == 4
    (name,) = plan.config["DATASETS"]["TRAIN"]
    assert name == "coco_2017_train_subset10pct_seed4"
    spec = plan.datasets[name]
    assert spec.subset["source"].endswith("instances_train2017.json")
    assert plan.problems == []
    prepare_datasets(plan)
    data = json.loads(Path(spec.json_file).read_text())
    assert len(data["images"]) == 1  # max(1, round(0.1 * 8))
    assert "--subset 10% --subset-seed 4" in plan.command()


def test_custom_coco_data(data_root: Path, cache: Path, results: Path, tmp_path: Path) -> None:
    ann = data_root / "coco" / "annotations"
    plan = _plan(
        "retinanet_1x",
        None,
        tmp_path / "c",
        data_root,
        cache,
        results,
        train_json=str(ann / "instances_train2017.json"),
        val_json=str(ann / "instances_val2017.json"),
        images=str(data_root / "coco" / "train2017"),
        val_images=str(data_root / "coco" / "val2017"),
    )
    assert plan.config["DATASETS"]["TRAIN"] == ["custom_train"] and plan.config["DATASETS"]["TEST"] == ["custom_val"]
    assert plan.config["MODEL"]["RETINANET"]["NUM_CLASSES"] == 4
    assert set(plan.datasets) == {"custom_train", "custom_val"} and plan.problems == []
    command = plan.command()
    assert "--train-json" in command and f"--val-images {data_root / 'coco' / 'val2017'}" in command
    with pytest.raises(UserError, match="needs --train-json, --val-json and --images"):
        _plan("retinanet_1x", None, tmp_path / "c2", data_root, cache, results, train_json="x.json")
    with pytest.raises(UserError, match="COCO-format tasks"):
        _plan("voc_c4_24k", None, tmp_path / "c3", data_root, cache, results, train_json="x.json")


# --------------------------------------------------------------------------------------------
# Dataset checks


def test_missing_coco_is_named_precisely(cache: Path, results: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plan = _plan("coco_fpn_1x", None, tmp_path / "o", empty, cache, results)
    root = empty.resolve()
    assert f"coco_2017_train: COCO images folder not found: {root / 'coco' / 'train2017'}" in plan.problems
    assert (
        f"coco_2017_val: COCO annotation file not found: {root / 'coco' / 'annotations' / 'instances_val2017.json'}"
    ) in plan.problems
    with pytest.raises(UserError, match="COCO images folder not found"):
        run_transfer(plan)


def test_missing_voc_image_set_and_cityscapes_train_ids(
    data_root: Path, cache: Path, results: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(data_root / "VOC2007", root / "VOC2007")
    shutil.copytree(data_root / "VOC2012", root / "VOC2012")
    shutil.copytree(data_root / "cityscapes", root / "cityscapes")
    shutil.copy(data_root / "synthetic_dataset.json", root)
    (root / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").unlink()
    shutil.rmtree(root / "VOC2007" / "JPEGImages")
    voc = _plan("voc_c4_24k", None, tmp_path / "o", root, cache, results)
    r = root.resolve()
    assert voc.problems == [
        f"voc_2007_trainval: VOC2007 JPEGImages/ folder missing: {r / 'VOC2007' / 'JPEGImages'}",
        f"voc_2012_trainval: VOC2012 image set missing: {r / 'VOC2012' / 'ImageSets' / 'Main' / 'trainval.txt'}",
        f"voc_2007_test: VOC2007 JPEGImages/ folder missing: {r / 'VOC2007' / 'JPEGImages'}",
    ]
    for p in (root / "cityscapes" / "gtFine").rglob("*_labelTrainIds.png"):
        p.unlink()
    sem = _plan("cityscapes_sem", None, tmp_path / "o2", root, cache, results)
    gt = r / "cityscapes" / "gtFine"
    assert sem.problems == [
        f"cityscapes_fine_sem_seg_train: no *_gtFine_labelTrainIds.png under {gt / 'train'} "
        f"(run: detco-bench data prepare cityscapes --root {r / 'cityscapes'})",
        f"cityscapes_fine_sem_seg_val: no *_gtFine_labelTrainIds.png under {gt / 'val'} "
        f"(run: detco-bench data prepare cityscapes --root {r / 'cityscapes'})",
    ]
    inst = _plan("cityscapes_inst_fpn", None, tmp_path / "o3", root, cache, results)
    assert inst.problems == []  # the instance task reads *_instanceIds.png, which exist
    shutil.rmtree(root / "cityscapes" / "leftImg8bit" / "val")
    inst = _plan("cityscapes_inst_fpn", None, tmp_path / "o3", root, cache, results)
    assert inst.problems == [
        f"cityscapes_fine_instance_seg_val: Cityscapes leftImg8bit/val folder not found: "
        f"{r / 'cityscapes' / 'leftImg8bit' / 'val'}"
    ]


# --------------------------------------------------------------------------------------------
# CLI


def _cli(*args: str) -> Any:
    return runner.invoke(app, ["transfer", *args])


def test_cli_dry_run_and_print_config(data_root: Path, checkpoint: Path, cache: Path, tmp_path: Path) -> None:
    common = [
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "o"),
        "--data-root",
        str(data_root),
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--results",
        str(tmp_path / "r"),
    ]
    result = _cli(
        "--task",
        "coco_fpn_12k",
        *common,
        "--dry-run",
        "--subset",
        "1%",
        "--opts",
        "SOLVER.MAX_ITER",
        "7",
        "TEST.PRECISE_BN.NUM_ITER",
        "-1",
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "coco_fpn_12k@1%" in out and "linear scaling rule" in out and "effective config" in out
    assert "--opts SOLVER.MAX_ITER 7 TEST.PRECISE_BN.NUM_ITER -1" in out
    assert not (tmp_path / "o").exists()  # a dry run writes nothing
    result = _cli("--task", "coco_fpn_12k", *common, "--print-config", "--opts", "SOLVER.MAX_ITER", "7")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)
    assert cfg["SOLVER"]["MAX_ITER"] == 7 and cfg["MODEL"]["RESNETS"]["NORM"] == "BN"
    # --print-config works without a checkpoint too
    result = _cli("--task", "cityscapes_sem", "--print-config", "--device", "cpu")
    assert result.exit_code == 0 and yaml.safe_load(result.output)["MODEL"]["SEM_SEG_HEAD"]["DILATION"] == 6


def test_cli_dry_run_with_missing_data_exits_2(checkpoint: Path, tmp_path: Path) -> None:
    result = _cli(
        "--task",
        "voc_c4_24k",
        "--out",
        str(tmp_path / "o"),
        "--data-root",
        str(tmp_path / "none"),
        "--device",
        "cpu",
        "--dry-run",
    )
    assert result.exit_code == 2
    assert "PROBLEM" in result.output and "VOC2007 folder not found" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "coco_fpn_3x", "--out", "x"], "unknown task 'coco_fpn_3x'"),
        (["--out", "x"], "--task is required"),
        (["--task", "coco_fpn_1x", "--out", "x"], "--checkpoint is required"),
        (["--task", "coco_fpn_1x", "--print-config", "--opts", "SOLVER.MAX_ITER", "x"], "expects an int"),
        (["--task", "coco_fpn_1x", "--print-config", "--opts", "SOLVER.MAX_ITER"], "odd number"),
        (["--task", "coco_fpn_1x", "--print-config", "stray"], "unexpected argument 'stray'"),
        (["--task", "coco_fpn_1x", "--print-config", "--engine", "mmdet"], "unknown engine 'mmdet'"),
        (["--task", "voc_c4_24k", "--print-config", "--subset", "1%"], "--subset applies to COCO tasks"),
    ],
)
def test_cli_user_errors_exit_2(args: list[str], message: str) -> None:
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_list() -> None:
    result = runner.invoke(app, ["transfer", "--list"])
    assert result.exit_code == 0
    for name in ("coco_c4_12k", "retinanet_2x", "keypoint_fpn_2x", "voc_c4_24k", "cityscapes_sem"):
        assert name in result.output


# --------------------------------------------------------------------------------------------
# Running (fake engine), records, folder state


def test_run_writes_records_and_a_finished_job_is_not_rerun(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()
    monkeypatch.setitem(engines.ENGINES, "torchvision", engine)
    out = tmp_path / "job"
    plan = _plan("coco_fpn_1x", checkpoint, out, data_root, cache, results, method="detco", pretrain_epochs=200)
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "success" and len(engine.plans) == 1
    assert weights_cached(plan.weights or "", plan.checkpoint.sha256)  # converted and verified
    record = read_record(outcome.record)
    assert record.status == "success" and record.engine == "torchvision" and record.task == "coco_fpn_1x.synthetic"
    # The engine gave two numbers; every other metric of the task is in the record as NaN, with a note.
    assert {k: record.metrics[k] for k in ("bbox/AP", "bbox/AP50")} == {"bbox/AP": 12.5, "bbox/AP50": 30.0}
    assert set(record.metrics) == set(plan.metrics)
    assert all(math.isnan(v) for k, v in record.metrics.items() if k not in ("bbox/AP", "bbox/AP50"))
    assert len(record.notes) == len(plan.metrics) - 2 and "segm/AP" in " ".join(record.notes)
    assert record.checkpoint.method == "detco" and record.checkpoint.pretrain_epochs == 200
    assert record.checkpoint.sha256 == plan.checkpoint.sha256
    assert record.config["DETCO_BENCH"]["scaling"]["rule"] == "linear"
    assert record.config["SOLVER"]["BASE_LR"] == pytest.approx(0.0025)
    assert record.provenance["wall_clock_s"] == pytest.approx(1.5)
    assert record.artifact_path("output_dir") == out.resolve()
    assert (out / "plan.json").is_file() and (out / "config.yaml").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text()) == plan.config
    assert read_state(out)["status"] == "success"
    # Same command again: reported as finished, the engine is not called, no new record.
    again = _plan("coco_fpn_1x", checkpoint, out, data_root, cache, results, method="detco", pretrain_epochs=200)
    assert again.state["status"] == "finished"
    assert run_transfer(again).status == "finished" and len(engine.plans) == 1
    # --force reruns it under a new run id; the old record stays.
    forced = _plan("coco_fpn_1x", checkpoint, out, data_root, cache, results, force=True)
    (out / "last_checkpoint").write_text("model_final.pth")
    assert run_transfer(forced, log=lambda m: None).status == "success" and len(engine.plans) == 2
    assert forced.run_id != plan.run_id and outcome.record.is_file()
    assert not (out / "last_checkpoint").exists()  # moved aside: the forced run does not resume
    assert (out / f"last_checkpoint.replaced-by-{forced.run_id}").is_file()
    assert len(list(results.glob("*.record.json"))) == 2


def test_failed_run_is_recorded_and_resumes_under_the_same_run_id(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(engines.ENGINES, "torchvision", FakeEngine(fail=True))
    out = tmp_path / "job"
    plan = _plan("retinanet_12k", checkpoint, out, data_root, cache, results)
    with pytest.raises(RuntimeError, match="boom"):
        run_transfer(plan, log=lambda m: None)
    failed = read_record(plan.record_path)
    assert failed.status == "failed" and "RuntimeError: boom" in (failed.error or "")
    assert read_state(out)["status"] == "failed"
    good = FakeEngine()
    monkeypatch.setitem(engines.ENGINES, "torchvision", good)
    resumed = _plan("retinanet_12k", checkpoint, out, data_root, cache, results)
    assert resumed.state["status"] == "resume" and resumed.run_id == plan.run_id and resumed.resume
    run_transfer(resumed, log=lambda m: None)
    record = read_record(plan.record_path)  # the same record, now a success
    assert record.status == "success" and record.run_id == plan.run_id
    assert read_state(out)["attempts"] == 2


def test_output_folder_conflicts(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(engines.ENGINES, "torchvision", FakeEngine())
    out = tmp_path / "job"
    run_transfer(_plan("coco_fpn_12k", checkpoint, out, data_root, cache, results), log=lambda m: None)
    other = _plan("retinanet_12k", checkpoint, out, data_root, cache, results)
    assert other.state["status"] == "conflict"
    assert any("holds another job (coco_fpn_12k" in p for p in other.problems)
    changed = _plan("coco_fpn_12k", checkpoint, out, data_root, cache, results, opts=["SOLVER.MAX_ITER", "3"])
    assert any("config_hash" in p for p in changed.problems)
    assert _plan("retinanet_12k", checkpoint, out, data_root, cache, results, force=True).problems == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    plan = _plan("coco_fpn_12k", checkpoint, foreign, data_root, cache, results)
    assert any("not a detco-bench transfer folder" in p for p in plan.problems)


def test_converted_weights_are_cached_by_sha256(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path
) -> None:
    plan = _plan("coco_fpn_1x", checkpoint, tmp_path / "o", data_root, cache, results)
    first = prepare_weights(plan)
    mtime = first.stat().st_mtime_ns
    assert prepare_weights(plan) == first and first.stat().st_mtime_ns == mtime
    report = json.loads(first.with_name(first.name + ".verify.json").read_text())
    assert report["passed"] and report["source"]["sha256"] == plan.checkpoint.sha256


# --------------------------------------------------------------------------------------------
# Engines registry and Slurm


def test_engine_registry() -> None:
    assert set(engines.ENGINES) == {"detectron2", "torchvision"}
    expected = "detectron2" if engines.ENGINES["detectron2"].available() is None else "torchvision"
    assert engines.resolve_engine("auto") == expected
    with pytest.raises(UserError, match="unknown engine"):
        engines.get_engine("mmdet")
    if not engines._TORCHVISION_ENGINE_PRESENT:
        assert engines.ENGINES["torchvision"].available() == "the torchvision engine is not available yet"
        with pytest.raises(UserError, match="the torchvision engine is not available yet"):
            engines.ENGINES["torchvision"].run(None)  # type: ignore[arg-type]
    if engines.ENGINES["detectron2"].available() is not None:
        assert "detectron2 is not importable" in engines.ENGINES["detectron2"].available()


def test_slurm_submission_through_sbatch(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'sbatch_args'}\necho 'Submitted batch job 4242'\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit only checks that it exists
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("DETCO_BENCH_SUBMITIT_CLUSTER", raising=False)
    monkeypatch.setitem(engines.ENGINES, "torchvision", FakeEngine())
    out = tmp_path / "job"
    plan = _plan(
        "coco_fpn_2x",
        checkpoint,
        out,
        data_root,
        cache,
        results,
        device="cuda",
        gpus=8,
        num_machines=2,
        launcher="slurm",
        slurm=SlurmSpec(partition="learnfair", time_min=120, cpus_per_task=6),
    )
    assert plan.problems == [] and plan.world_size == 16
    assert plan.config["SOLVER"]["IMS_PER_BATCH"] == 32  # linear rule for 16 GPUs
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "submitted" and outcome.job_id == "4242"
    state = read_state(out)
    assert state["status"] == "submitted" and state["job_id"] == "4242"
    script = next((out / "slurm").rglob("*_submission.sh")).read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --partition=learnfair",
        "#SBATCH --time=120",
        "#SBATCH --cpus-per-task=6",
    ):
        assert line in script, line
    assert read_record(plan.record_path).status == "running"
    # The pickled job carries the plan for the compute nodes, set to resume there.
    pickled = list((out / "slurm").rglob("*_submitted.pkl"))
    assert pickled


def test_slurm_without_a_cluster_is_a_user_error(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    if shutil.which("srun"):
        pytest.skip("this machine has srun")
    monkeypatch.delenv("DETCO_BENCH_SUBMITIT_CLUSTER", raising=False)
    monkeypatch.setitem(engines.ENGINES, "torchvision", FakeEngine())
    plan = _plan(
        "coco_fpn_2x", checkpoint, tmp_path / "job", data_root, cache, results, device="cuda", launcher="slurm"
    )
    with pytest.raises(UserError, match="srun"):
        run_transfer(plan, log=lambda m: None)


# --------------------------------------------------------------------------------------------
# Cityscapes: preparation with cityscapesScripts, evaluation through cityscapesScripts


@pytest.fixture()
def cityscapes(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    shutil.copytree(data_root / "cityscapes", root)
    for p in root.rglob("*_labelTrainIds.png"):
        p.unlink()
    return root


def test_prepare_cityscapes_creates_train_ids(cityscapes: Path) -> None:
    from cityscapesscripts.helpers.labels import id2label
    from PIL import Image

    result = runner.invoke(app, ["data", "prepare", "cityscapes", "--root", str(cityscapes.parent)])
    assert result.exit_code == 0, result.output
    assert "wrote 12 labelTrainIds" in result.output
    lut = np.full(256, 255, np.uint8)
    for i, label in id2label.items():
        if 0 <= i < 256:
            lut[i] = label.trainId if 0 <= label.trainId < 255 else 255
    for label_ids in cityscapes.rglob("*_gtFine_labelIds.png"):
        train_ids = np.asarray(Image.open(str(label_ids).replace("_labelIds", "_labelTrainIds")))
        expected = lut[np.asarray(Image.open(label_ids))]
        assert (train_ids == expected).mean() > 0.97  # polygons vs the rendered masks: a few pixels
    again = runner.invoke(app, ["data", "prepare", "cityscapes", "--root", str(cityscapes)])
    assert "wrote 0 labelTrainIds (12 existed)" in again.output
    bad = runner.invoke(app, ["data", "prepare", "cityscapes", "--root", str(cityscapes / "gtFine")])
    assert bad.exit_code == 2 and "not a Cityscapes root" in bad.output


def test_prepare_cityscapes_instance_ids_despite_pillow_mode_i(cityscapes: Path) -> None:
    from PIL import Image

    from detco_bench.datasets import prepare_cityscapes

    target = next(cityscapes.rglob("*_gtFine_instanceIds.png"))
    original = np.asarray(Image.open(target)).astype(np.int64)
    target.unlink()
    summary = prepare_cityscapes(cityscapes, instance_ids=True)
    assert summary["written"]["instanceIds"] == 1 and summary["skipped_existing"]["instanceIds"] == 11
    made = Image.open(target)
    assert made.mode == "I;16"
    assert (np.asarray(made).astype(np.int64) == original).mean() > 0.97


def test_cityscapes_evaluation_of_perfect_predictions(cityscapes: Path, tmp_path: Path) -> None:
    from PIL import Image

    from detco_bench.datasets import (
        CITYSCAPES_THING_IDS,
        load_cityscapes_instances,
        load_cityscapes_semantic,
        prepare_cityscapes,
    )
    from detco_bench.evaluation import InstanceWriter, SemanticWriter

    prepare_cityscapes(cityscapes)
    images, gt = cityscapes / "leftImg8bit" / "val", cityscapes / "gtFine" / "val"
    sem = SemanticWriter(tmp_path / "sem")
    for d in load_cityscapes_semantic(images, gt):
        label_ids = np.asarray(Image.open(d["sem_seg_file_name"].replace("_labelTrainIds", "_labelIds")))
        from cityscapesscripts.helpers.labels import id2label

        train = np.vectorize(lambda i: id2label[int(i)].trainId)(label_ids)
        sem.add(d["file_name"], train)
    metrics = sem.evaluate(gt)
    assert metrics["mIoU"] == pytest.approx(100.0) and set(metrics) >= {"mIoU", "IoU_sup", "iIoU"}

    inst = InstanceWriter(tmp_path / "inst")
    dicts = load_cityscapes_instances(images, gt)
    assert sum(len(d["annotations"]) for d in dicts) > 0
    for d in dicts:
        raw = np.asarray(
            Image.open(
                d["file_name"]
                .replace("leftImg8bit", "gtFine", 1)
                .replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
            )
        )
        ids = [v for v in np.unique(raw) if v >= 1000 and v // 1000 in CITYSCAPES_THING_IDS]
        masks = np.stack([raw == v for v in ids]) if ids else np.zeros((0, *raw.shape), bool)
        classes = np.array([CITYSCAPES_THING_IDS.index(v // 1000) for v in ids], dtype=int)
        inst.add(d["file_name"], masks, classes, np.ones(len(ids)))
    result = inst.evaluate(gt)
    assert result["AP"] == pytest.approx(100.0) and result["AP50"] == pytest.approx(100.0)


def test_record_label_marks_runs_that_are_not_the_protocol(data_root: Path, tmp_path: Path) -> None:
    """Only the real dataset with the protocol's settings keeps the name the references use."""
    from detco_bench.transfer import record_label

    real = tmp_path / "datasets"
    real.mkdir()
    assert record_label("coco_fpn_1x", real, custom=False, opts=[]) == "coco_fpn_1x"
    assert record_label("coco_fpn_1x", real, custom=False, opts=["DATALOADER.NUM_WORKERS", "8"]) == "coco_fpn_1x"
    assert record_label("coco_fpn_1x", real, custom=False, opts=["SOLVER.MAX_ITER", "5"]) == "coco_fpn_1x+opts"
    assert record_label("coco_fpn_1x", real, custom=True, opts=None) == "coco_fpn_1x.custom"
    assert record_label("coco_fpn_12k@1%", data_root, custom=False, opts=["INPUT.MIN_SIZE_TEST", "96"]) == \
        "coco_fpn_12k@1%.synthetic+opts"


# --------------------------------------------------------------------------------------------
# One writer per folder


def test_a_second_writer_is_refused_and_a_finished_folder_not_rerun(
    data_root: Path, checkpoint: Path, cache: Path, results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pretrain.lock import FolderLockedError, folder_lock

    engine = FakeEngine()
    monkeypatch.setitem(engines.ENGINES, "torchvision", engine)
    out = tmp_path / "job"
    first = _plan("coco_fpn_1x", checkpoint, out, data_root, cache, results)
    second = _plan("coco_fpn_1x", checkpoint, out, data_root, cache, results)  # planned before either runs
    with folder_lock(out):  # another process writes the folder
        with pytest.raises(FolderLockedError, match="being written by another detco-bench process"):
            run_transfer(second, log=lambda m: None)
    assert not engine.plans and not list(results.glob("*.record.json"))
    assert run_transfer(first, log=lambda m: None).status == "success"
    # The second plan saw a new folder; it now holds the finished job: reported, not rerun.
    assert run_transfer(second, log=lambda m: None).status == "finished" and len(engine.plans) == 1
    stale = out / ".model_0000009.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    third = _plan("coco_fpn_1x", checkpoint, out, data_root, cache, results, force=True)
    run_transfer(third, log=lambda m: None)
    assert not stale.exists(), "the temp file of a killed write is removed by the next writer"


def test_cli_second_writer_exits_2_with_one_line(data_root: Path, checkpoint: Path, cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pretrain.lock import folder_lock

    monkeypatch.setitem(engines.ENGINES, "torchvision", FakeEngine())
    out = tmp_path / "job"
    args = ["transfer", "--task", "coco_fpn_1x", "--checkpoint", str(checkpoint), "--out", str(out), "--engine",
            "torchvision", "--device", "cpu", "--data-root", str(data_root), "--cache-dir", str(cache),
            "--results", str(tmp_path / "r")]
    with folder_lock(out):
        result = runner.invoke(app, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "being written by another" in result.stderr
