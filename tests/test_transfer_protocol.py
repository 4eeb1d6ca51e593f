"""How a planned run differs from the published protocol, and short schedules that stay consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from detco_bench.cli import app
from detco_bench.errors import UserError
from detco_bench.synthetic import write_synthetic_dataset
from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer.planner import plan_transfer
from detco_bench.transfer.protocol import images_per_bn_group
from detco_bench.transfer_config import effective_config

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root, "coco", num_train=4, num_val=2, seed=0, image_size=(64, 64))
    return root


def _plan(out: Path, root: Path, **kw: object) -> TransferPlan:
    kw.setdefault("engine", "torchvision")
    return plan_transfer(kw.pop("task", "coco_fpn_1x"), None, out, data_root_dir=root, results_dir=out / "r",
                         **kw)  # type: ignore[arg-type]


def test_the_published_setting_is_exact(tmp_path: Path) -> None:
    # 8 GPUs through Slurm (nothing needs to be visible here), the task's own data (missing: a problem,
    # not a protocol difference).
    plan = _plan(tmp_path / "o", tmp_path / "datasets", device="cuda", gpus=8, launcher="slurm")
    p = plan.protocol
    assert p["protocol"] == "exact" and p["differences"] == []
    assert (p["world_size"], p["ims_per_gpu"], p["total_batch"], p["ims_per_bn_group"]) == (8, 2, 16, 16)
    assert p["base_lr"] == 0.02 and p["max_iter"] == 90000 and p["scaling_rule"] == "linear"
    assert plan.record_config()["DETCO_BENCH"]["protocol"] == p


def test_one_cpu_process_on_synthetic_data_is_adapted(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path / "o", synthetic_root, device="cpu")
    p = plan.protocol
    assert p["protocol"] == "adapted"
    assert (p["world_size"], p["ims_per_gpu"], p["total_batch"], p["ims_per_bn_group"]) == (1, 2, 2, 2)
    text = "\n".join(p["differences"])
    assert "data: synthetic dataset" in text
    assert "MODEL.RESNETS.NORM: 'SyncBN' -> 'BN'" in text
    assert "SOLVER.IMS_PER_BATCH: 16 -> 2 (linear scaling rule for 1 process(es))" in text
    assert "BN normalises over 2 image(s) per group, the protocol over 16" in text


def test_scaling_none_keeps_the_batch_but_bn_changes_on_cpu(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu", scaling="none")
    p = plan.protocol
    assert p["total_batch"] == 16 and p["ims_per_bn_group"] == 16 and p["protocol"] == "adapted"
    assert any(d.startswith("MODEL.RESNETS.NORM") for d in p["differences"])


def test_images_per_bn_group() -> None:
    cfg = effective_config("coco_fpn_1x")
    assert images_per_bn_group(cfg, 8) == 16  # SyncBN over the whole batch
    assert images_per_bn_group(effective_config("cityscapes_inst_fpn"), 8) == 8
    cfg["MODEL"]["RESNETS"]["NORM"] = "BN"
    assert images_per_bn_group(cfg, 8) == 2


def test_a_short_schedule_scales_warmup_and_steps(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu", opts=["SOLVER.MAX_ITER", "7200"])
    solver = plan.config["SOLVER"]
    # 1 process: linear rule 90000 -> 720000 iterations, warm-up 8000, steps 480000 / 640000; then
    # --opts MAX_ITER 7200 (1/100) carries them along.
    assert solver["MAX_ITER"] == 7200 and solver["WARMUP_ITERS"] == 80 and solver["STEPS"] == [4800, 6400]
    fitted = [a for a in plan.adaptations if "scaled with the schedule" in a["why"]]
    assert {a["key"] for a in fitted} == {"SOLVER.WARMUP_ITERS", "SOLVER.STEPS"}


def test_keys_set_by_the_user_are_kept(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu",
                 opts=["SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(80,)"])
    assert plan.config["SOLVER"]["WARMUP_ITERS"] == 10 and plan.config["SOLVER"]["STEPS"] == [80]


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "50"], "never leave warm-up"),
    (["SOLVER.MAX_ITER", "0"], "at least one iteration"),
    (["SOLVER.IMS_PER_BATCH", "-2"], "at least one image"),
])
def test_schedules_that_cannot_run_are_refused(tmp_path: Path, opts: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        _plan(tmp_path / "o", tmp_path / "datasets", device="cpu", opts=opts)
    assert not (tmp_path / "o").exists()


def test_print_config_says_how_it_is_adapted_and_protocol_prints_the_published_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["transfer", "--task", "coco_fpn_1x", "--print-config", "--device", "cpu",
                                 "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    head = result.output.splitlines()[0]
    assert head.startswith("# protocol: ADAPTED") and "# BN normalises over 2 image(s)" not in head
    assert "#   SOLVER.IMS_PER_BATCH: 16 -> 2" in result.output
    assert yaml.safe_load(result.output)["SOLVER"]["IMS_PER_BATCH"] == 2
    published = runner.invoke(app, ["transfer", "--task", "coco_fpn_1x", "--protocol"])
    assert published.exit_code == 0, published.output
    cfg = yaml.safe_load(published.output)
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 16 and cfg["MODEL"]["RESNETS"]["NORM"] == "SyncBN"
    assert cfg["MODEL"]["DEVICE"] == "cuda"


def test_scaled_steps_stay_increasing_and_inside_the_run(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu", opts=["SOLVER.MAX_ITER", "2"])
    assert plan.config["SOLVER"]["STEPS"] == [1] and plan.config["SOLVER"]["WARMUP_ITERS"] == 0
    plan = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu", opts=["SOLVER.MAX_ITER", "1"])
    assert plan.config["SOLVER"]["STEPS"] == []


def test_loader_workers_fit_the_machine(tmp_path: Path) -> None:
    from detco_bench.transfer.adapt import ConfigChanges, adapt_workers

    cfg = effective_config("coco_fpn_1x")
    changes = ConfigChanges(cfg)
    adapt_workers(changes, world_size=1, cpus=2)
    assert cfg["DATALOADER"]["NUM_WORKERS"] == 2 and "2 CPU(s)" in changes.items[0]["why"]
    adapt_workers(changes, world_size=8, cpus=64)  # 8 per process fit: the config's 2 stay
    assert cfg["DATALOADER"]["NUM_WORKERS"] == 2
    # The identity of a job does not depend on the machine it was planned on.
    a = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu")
    b = _plan(tmp_path / "o", tmp_path / "datasets", device="cpu", opts=["DATALOADER.NUM_WORKERS", "7"])
    assert a.state["identity"]["config_hash"] == b.state["identity"]["config_hash"]


def test_opts_read_the_same_as_tokens_or_one_string() -> None:
    from detco_bench.transfer.options import opts_from_argv

    assert opts_from_argv(["--opts", "SOLVER.MAX_ITER", "5"]) == ["SOLVER.MAX_ITER", "5"]
    assert opts_from_argv(["--opts", "SOLVER.MAX_ITER 5 INPUT.MIN_SIZE_TRAIN '(64,)'"]) == [
        "SOLVER.MAX_ITER", "5", "INPUT.MIN_SIZE_TRAIN", "(64,)"]
    assert opts_from_argv(["--opts", "INPUT.MIN_SIZE_TRAIN", "(640, 672)"]) == ["INPUT.MIN_SIZE_TRAIN", "(640, 672)"]
    with pytest.raises(UserError, match="after --opts"):
        opts_from_argv(["SOLVER.MAX_ITER", "5"])


def test_c4_max_size_1200_only_in_the_moco_overlay() -> None:
    from detco_bench.transfer_config import load_config_file

    assert load_config_file("coco_R_50_C4_2x.yaml")["INPUT"].get("MAX_SIZE_TRAIN", 1333) == 1333
    assert load_config_file("coco_R_50_C4_2x_moco.yaml")["INPUT"]["MAX_SIZE_TRAIN"] == 1200
    assert effective_config("coco_c4_1x")["INPUT"]["MAX_SIZE_TRAIN"] == 1200
