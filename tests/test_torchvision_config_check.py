"""`engines/torchvision/check.py`: what the torchvision engine refuses is found at plan time, one line
per refusing part, and nothing it can run is refused (every task's protocol config, on every
ResNet its checkpoints can be). The command-line side (one `error:` line, exit 2, no folder) is in
tests/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from detco_bench.engines import get_engine
from detco_bench.engines.torchvision.check import config_problems
from detco_bench.tasks import TASKS, get_task
from detco_bench.transfer_config import apply_opts, effective_config


@pytest.mark.parametrize("task", sorted(TASKS))
def test_no_task_protocol_is_refused(task: str) -> None:
    t = get_task(task)
    assert config_problems(effective_config(t, []), t.family) == []


@pytest.mark.parametrize("opts,fragment", [
    (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "centre"], "INPUT.CROP.TYPE 'centre'"),
    (["INPUT.MASK_FORMAT", "rle"], "INPUT.MASK_FORMAT 'rle': polygon or bitmask"),
    (["INPUT.RANDOM_FLIP", "diagonal"], "INPUT.RANDOM_FLIP 'diagonal'"),
    (["SOLVER.CLIP_GRADIENTS.ENABLED", "True"], "SOLVER.CLIP_GRADIENTS is not supported"),
    (["SOLVER.WARMUP_METHOD", "exponential"], "SOLVER.WARMUP_METHOD 'exponential'"),
    (["MODEL.ROI_BOX_HEAD.NUM_FC", "3"], "2-FC box head"),
    (["MODEL.RESNETS.NORM", "LN"], "unsupported norm 'LN'"),
    # read by no part of the engine: without the check it would train torchvision's ResNet instead
    (["MODEL.RESNETS.STRIDE_IN_1X1", "True"], "does not build MODEL.RESNETS.STRIDE_IN_1X1 True"),
    (["MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "8"], "does not build a ResNeXt trunk"),
])
def test_each_refusal_is_one_line(opts: list[str], fragment: str) -> None:
    t = get_task("coco_fpn_1x")
    problems = config_problems(apply_opts(effective_config(t, []), opts), t.family)
    assert len(problems) == 1 and fragment in problems[0], problems
    assert "torchvision engine" in problems[0]


def test_refusals_of_several_parts_are_all_listed() -> None:
    t = get_task("retinanet_12k")
    config = apply_opts(effective_config(t, []), ["MODEL.RETINANET.NUM_CONVS", "2", "INPUT.CROP.ENABLED", "True",
                                                  "INPUT.CROP.TYPE", "centre",
                                                  "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR"])
    problems = config_problems(config, t.family)
    assert len(problems) == 3, problems
    assert any("NUM_CONVS 2" in p for p in problems) and any("WarmupPolyLR" in p for p in problems)


def test_semantic_crops_are_not_refused() -> None:
    t = get_task("cityscapes_sem")
    config = effective_config(t, [])
    assert config["INPUT"]["CROP"]["ENABLED"]
    assert config_problems(config, t.family) == []


def test_the_plan_carries_them_and_the_run_refuses_before_writing(tmp_path: Path) -> None:
    from detco_bench.errors import UserError
    from detco_bench.transfer import plan_transfer, run_transfer

    out = tmp_path / "job"
    plan = plan_transfer("coco_fpn_1x", None, out, engine="torchvision", device="cpu", data_root_dir=tmp_path,
                         opts=["SOLVER.CLIP_GRADIENTS.ENABLED", "True"])
    assert any("SOLVER.CLIP_GRADIENTS" in p for p in plan.problems)
    with pytest.raises(UserError, match="SOLVER.CLIP_GRADIENTS"):
        run_transfer(plan, log=lambda m: None)
    assert not out.exists()


def test_the_detectron2_engine_is_not_asked() -> None:
    t = get_task("coco_fpn_1x")
    config = apply_opts(effective_config(t, []), ["SOLVER.CLIP_GRADIENTS.ENABLED", "True"])
    assert get_engine("detectron2").config_problems(config, t.family) == []
    assert get_engine("torchvision").config_problems(config, t.family) != []


def test_a_class_count_the_data_contradicts_is_one_line_at_setup(tmp_path: Path) -> None:
    """What only the data tells (the class count) is checked when the run sets up: a `UserError`
    (the command's one `error:` line, exit 2), not a traceback."""
    from detco_bench.errors import UserError
    from detco_bench.synthetic import write_synthetic_dataset
    from detco_bench.transfer import plan_transfer, run_transfer
    from tests.conftest import save_random_resnet

    write_synthetic_dataset(tmp_path / "data", "coco", num_train=2, num_val=1, seed=0, image_size=(64, 64))
    plan = plan_transfer("coco_fpn_12k", save_random_resnet(tmp_path / "r18.pth"), tmp_path / "job",
                         engine="torchvision", device="cpu", data_root_dir=tmp_path / "data",
                         results_dir=tmp_path / "results", cache_dir=tmp_path / "cache",
                         opts=["SOLVER.MAX_ITER", "1", "MODEL.ROI_HEADS.NUM_CLASSES", "7"])
    assert plan.problems == []
    with pytest.raises(UserError, match="MODEL.ROI_HEADS.NUM_CLASSES is 7 but the training data has 4 classes"):
        run_transfer(plan, log=lambda m: None)
