"""detco_bench/transfer_configs/ and detco_bench.transfer_config, without detectron2: every chain parses, and
every task's effective config has the published MoCo / DetCo protocol values (table-driven)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from detco_bench.errors import UserError
from detco_bench.tasks import TASKS, get_task
from detco_bench.transfer_config import (
    apply_opts,
    base_chain,
    config_dir,
    decode_value,
    deep_merge,
    effective_config,
    flatten,
    get_key,
    load_config_file,
    parse_opts,
    to_yaml,
)

RGB_MEAN = [123.675, 116.28, 103.53]
RGB_STD = [58.395, 57.12, 57.375]
COCO_SIZES = [640, 672, 704, 736, 768, 800]
VOC_SIZES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
CITYSCAPES_SIZES = [800, 832, 864, 896, 928, 960, 992, 1024]
SCHEDULES = {"12k": ([9000, 11000], 12000), "1x": ([60000, 80000], 90000), "2x": ([120000, 160000], 180000)}


def _coco(family: str, schedule: str, **extra: Any) -> dict[str, Any]:
    steps, max_iter = SCHEDULES[schedule]
    row: dict[str, Any] = {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.02,
        "SOLVER.STEPS": steps,
        "SOLVER.MAX_ITER": max_iter,
        "SOLVER.WARMUP_ITERS": 1000,
        "INPUT.MIN_SIZE_TRAIN": COCO_SIZES,
        "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
        "INPUT.MAX_SIZE_TRAIN": 1333,
        "INPUT.MIN_SIZE_TEST": 800,
        "INPUT.MAX_SIZE_TEST": 1333,
        "DATASETS.TRAIN": ["coco_2017_train"],
        "DATASETS.TEST": ["coco_2017_val"],
    }
    if family == "c4":
        row.update(
            {
                "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
                "MODEL.MASK_ON": True,
                "MODEL.ROI_HEADS.NUM_CLASSES": 80,
                "INPUT.MAX_SIZE_TRAIN": 1200,
                "MODEL.FPN.NORM": "",  # detectron2 default: no norm (C4 and dilated models have no FPN)
                "MODEL.RESNETS.OUT_FEATURES": ["res4"],
                "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
            }
        )
    elif family == "fpn":
        row.update(
            {
                "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
                "MODEL.MASK_ON": True,
                "MODEL.ROI_HEADS.NUM_CLASSES": 80,
                "MODEL.FPN.NORM": "SyncBN",
                "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
            }
        )
    elif family == "retinanet":
        row.update(
            {
                "MODEL.META_ARCHITECTURE": "RetinaNet",
                "SOLVER.BASE_LR": 0.01,
                "MODEL.RETINANET.NUM_CLASSES": 80,
                "MODEL.FPN.NORM": "SyncBN",
                "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone",
                "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA": 0.0,
                "MODEL.MASK_ON": False,
            }
        )
    row.update(extra)
    return row


PROTOCOL: dict[str, dict[str, Any]] = {
    "coco_c4_12k": _coco("c4", "12k"),
    "coco_c4_1x": _coco("c4", "1x"),
    "coco_c4_2x": _coco("c4", "2x"),
    "coco_fpn_12k": _coco("fpn", "12k"),
    "coco_fpn_1x": _coco("fpn", "1x"),
    "coco_fpn_2x": _coco("fpn", "2x"),
    "retinanet_12k": _coco("retinanet", "12k"),
    "retinanet_1x": _coco("retinanet", "1x"),
    "retinanet_2x": _coco("retinanet", "2x"),
    "keypoint_fpn_2x": _coco(
        "fpn",
        "2x",
        **{
            "MODEL.KEYPOINT_ON": True,
            "MODEL.MASK_ON": False,
            "MODEL.ROI_HEADS.NUM_CLASSES": 1,
            "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": 17,
            "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.5,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1500,
            "DATASETS.TRAIN": ["keypoints_coco_2017_train"],
            "DATASETS.TEST": ["keypoints_coco_2017_val"],
        },
    ),
    "voc_c4_24k": {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
        "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
        "MODEL.MASK_ON": False,
        "MODEL.ROI_HEADS.NUM_CLASSES": 20,
        "MODEL.FPN.NORM": "",  # detectron2 default: no norm (C4 and dilated models have no FPN)
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.02,
        "SOLVER.STEPS": [18000, 22000],
        "SOLVER.MAX_ITER": 24000,
        "SOLVER.WARMUP_ITERS": 100,
        "INPUT.MIN_SIZE_TRAIN": VOC_SIZES,
        "INPUT.MAX_SIZE_TRAIN": 1333,
        "INPUT.MIN_SIZE_TEST": 800,
        "INPUT.MAX_SIZE_TEST": 1333,
        "DATASETS.TRAIN": ["voc_2007_trainval", "voc_2012_trainval"],
        "DATASETS.TEST": ["voc_2007_test"],
    },
    "cityscapes_inst_fpn": {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
        "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
        "MODEL.MASK_ON": True,
        "MODEL.ROI_HEADS.NUM_CLASSES": 8,
        "MODEL.FPN.NORM": "SyncBN",
        "SOLVER.IMS_PER_BATCH": 8,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.STEPS": [18000],
        "SOLVER.MAX_ITER": 24000,
        "SOLVER.WARMUP_ITERS": 1000,
        "INPUT.MIN_SIZE_TRAIN": CITYSCAPES_SIZES,
        "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
        "INPUT.MAX_SIZE_TRAIN": 2048,
        "INPUT.MIN_SIZE_TEST": 1024,
        "INPUT.MAX_SIZE_TEST": 2048,
        "DATASETS.TRAIN": ["cityscapes_fine_instance_seg_train"],
        "DATASETS.TEST": ["cityscapes_fine_instance_seg_val"],
    },
    "cityscapes_sem": {
        "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
        "MODEL.RESNETS.RES5_DILATION": 2,
        "MODEL.RESNETS.OUT_FEATURES": ["res5"],
        "MODEL.SEM_SEG_HEAD.NAME": "FCNDilatedHead",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
        "MODEL.SEM_SEG_HEAD.NUM_CONVS": 2,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
        "MODEL.SEM_SEG_HEAD.DILATION": 6,
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 16,
        "MODEL.SEM_SEG_HEAD.NORM": "SyncBN",
        "MODEL.FPN.NORM": "",  # detectron2 default: no norm (C4 and dilated models have no FPN)
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.STEPS": [63000, 81000],
        "SOLVER.MAX_ITER": 90000,
        "INPUT.MIN_SIZE_TRAIN": [512, 2048],
        "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range",
        "INPUT.MAX_SIZE_TRAIN": 4096,
        "INPUT.MIN_SIZE_TEST": 1024,
        "INPUT.MAX_SIZE_TEST": 2048,
        "INPUT.CROP.ENABLED": True,
        "INPUT.CROP.TYPE": "absolute",
        "INPUT.CROP.SIZE": [769, 769],
        "DATASETS.TRAIN": ["cityscapes_fine_sem_seg_train"],
        "DATASETS.TEST": ["cityscapes_fine_sem_seg_val"],
    },
}

#: What every task of the MoCo / DetCo protocol has.
COMMON = {
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.PIXEL_MEAN": RGB_MEAN,
    "MODEL.PIXEL_STD": RGB_STD,
    "INPUT.FORMAT": "RGB",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.GAMMA": 0.1,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.REFERENCE_WORLD_SIZE": 0,
    "MODEL.WEIGHTS": "",
}


def test_protocol_table_covers_every_task() -> None:
    assert set(PROTOCOL) == set(TASKS)


@pytest.mark.parametrize("name", list(PROTOCOL))
def test_effective_config_has_the_protocol_values(name: str) -> None:
    cfg = effective_config(name)
    task = get_task(name)
    expected = {**COMMON, **PROTOCOL[name]}
    for key, value in expected.items():
        actual = get_key(cfg, key, None)
        if isinstance(value, float):
            assert actual == pytest.approx(value), (name, key)
        else:
            assert actual == value, (name, key, actual)
    # The registry agrees with the config.
    assert cfg["SOLVER"]["MAX_ITER"] == task.max_iter
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == task.ims_per_batch
    assert cfg["SOLVER"]["BASE_LR"] == pytest.approx(task.base_lr)
    assert tuple(cfg["DATASETS"]["TRAIN"]) == task.train and tuple(cfg["DATASETS"]["TEST"]) == task.test
    # Steps are inside the schedule and increasing.
    steps = cfg["SOLVER"]["STEPS"]
    assert steps == sorted(steps) and 0 < steps[-1] < cfg["SOLVER"]["MAX_ITER"]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_chain_parses_and_ends_in_the_moco_overlay(name: str) -> None:
    task = get_task(name)
    chain = base_chain(task.config)
    assert chain[0].name == "Base-Defaults.yaml"
    assert chain[-1].name == task.config
    # The overlay that makes a torchvision-style checkpoint work is in the chain.
    moco = [p for p in chain if p.name.endswith("_moco.yaml")]
    assert moco, chain
    overlay = yaml.safe_load(moco[0].read_text())
    expected = {
        "MODEL.PIXEL_MEAN": RGB_MEAN,
        "MODEL.PIXEL_STD": RGB_STD,
        "MODEL.WEIGHTS": "",
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "INPUT.FORMAT": "RGB",
    }
    if task.family == "c4":  # DetCo's COCO C4 overlays also cap the training size (its baselines keep 1333)
        expected["INPUT.MAX_SIZE_TRAIN"] = 1200
    assert flatten(decode_value({k: v for k, v in overlay.items() if k != "_BASE_"})) == expected
    cfg = effective_config(name)
    assert "_BASE_" not in cfg
    # JSON-compatible: no tuples anywhere, and it survives a YAML round trip.
    assert not any(isinstance(v, tuple) for v in flatten(cfg).values())
    assert yaml.safe_load(to_yaml(cfg)) == cfg


def test_every_yaml_file_is_safe_and_reachable() -> None:
    files = sorted(config_dir().glob("*.yaml"))
    reachable = {p.name for t in TASKS.values() for p in base_chain(t.config)}
    assert {p.name for p in files} == reachable, "every config file is used by some task"
    for path in files:
        yaml.safe_load(path.read_text())  # no python tags (detectron2's RetinaNet base uses one)


def test_yacs_style_decoding_and_merge(tmp_path: Path) -> None:
    assert decode_value("(640, 672)") == [640, 672]
    assert decode_value("1e-3") == 0.001
    assert decode_value("RGB") == "RGB"
    assert decode_value({"A": "((1, 2), 3)"}) == {"A": [[1, 2], 3]}
    merged = deep_merge({"A": {"B": 1, "C": [1, 2]}, "D": 1}, {"A": {"C": [3]}, "E": 2})
    assert merged == {"A": {"B": 1, "C": [3]}, "D": 1, "E": 2}
    (tmp_path / "base.yaml").write_text("SOLVER:\n  STEPS: (10, 20)\n  BASE_LR: 0.1\n")
    (tmp_path / "child.yaml").write_text('_BASE_: "base.yaml"\nSOLVER:\n  BASE_LR: 0.2\n')
    assert load_config_file(tmp_path / "child.yaml") == {"SOLVER": {"STEPS": [10, 20], "BASE_LR": 0.2}}


def test_broken_chains_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(UserError, match="circular _BASE_"):
        load_config_file(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text('_BASE_: "nope.yaml"\n')
    with pytest.raises(UserError, match="config file not found"):
        load_config_file(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("A: [1,\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config_file(tmp_path / "d.yaml")


def test_opts_are_decoded_and_coerced() -> None:
    cfg = effective_config(
        "coco_fpn_1x",
        [
            "SOLVER.MAX_ITER",
            "5",
            "SOLVER.BASE_LR",
            "1",
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "SOLVER.STEPS",
            "[3, 4]",
            "MODEL.MASK_ON",
            "False",
            "INPUT.FORMAT",
            "BGR",
            "DATASETS.TEST",
            "('coco_2017_val',)",
        ],
        known=None,
    )
    assert cfg["SOLVER"]["MAX_ITER"] == 5
    assert cfg["SOLVER"]["BASE_LR"] == 1.0 and isinstance(cfg["SOLVER"]["BASE_LR"], float)
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [96]
    assert cfg["SOLVER"]["STEPS"] == [3, 4]
    assert cfg["MODEL"]["MASK_ON"] is False
    assert cfg["INPUT"]["FORMAT"] == "BGR"
    assert cfg["DATASETS"]["TEST"] == ["coco_2017_val"]
    # the task's own config is untouched
    assert effective_config("coco_fpn_1x")["SOLVER"]["MAX_ITER"] == 90000


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.MAX_ITER"], "odd number"),
        (["solver.max_iter", "5"], "not a config key"),
        (["SOLVER.MAX_ITER", "abc"], "expects an int"),
        (["SOLVER.MAX_ITER", "1.5"], "expects an int"),
        (["MODEL.MASK_ON", "1"], "expects a bool"),
        (["INPUT.MIN_SIZE_TRAIN", "800"], "expects a list"),
        (["SOLVER", "1"], "config section"),
        (["SOLVER.MAX_ITR", "5"], "did you mean SOLVER.MAX_ITER"),
    ],
)
def test_bad_opts_are_user_errors(opts: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        effective_config("coco_fpn_1x", opts, known=None)


def test_unknown_keys_are_accepted_only_when_detectron2_knows_them() -> None:
    def known() -> dict[str, Any]:
        return {"MODEL.RPN.HEAD_NAME": "StandardRPNHead", "MODEL.RPN.IN_FEATURES": ["res4"]}

    cfg = apply_opts(effective_config("coco_c4_1x"), ["MODEL.RPN.HEAD_NAME", "Other"], known=known)
    assert cfg["MODEL"]["RPN"]["HEAD_NAME"] == "Other"
    with pytest.raises(UserError, match="neither in the task's config nor in detectron2's defaults"):
        apply_opts(effective_config("coco_c4_1x"), ["MODEL.RPN.FOO", "1"], known=known)
    with pytest.raises(UserError, match="detectron2 is not importable"):
        apply_opts(effective_config("coco_c4_1x"), ["MODEL.RPN.HEAD_NAME", "Other"], known=lambda: None)
    # Keys of Base-Defaults.yaml (detectron2's defaults the engines read) work without detectron2.
    cfg = apply_opts(effective_config("coco_fpn_1x"), ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"],
                     known=lambda: None)
    assert cfg["MODEL"]["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"] == 64
    assert parse_opts([]) == []


def test_config_folder_can_be_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(config_dir(), tmp_path / "configs")
    monkeypatch.setenv("DETCO_BENCH_TRANSFER_CONFIGS", str(tmp_path / "configs"))
    assert config_dir() == tmp_path / "configs"
    assert effective_config("voc_c4_24k")["SOLVER"]["WARMUP_ITERS"] == 100
    monkeypatch.setenv("DETCO_BENCH_TRANSFER_CONFIGS", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="transfer configs not found"):
        effective_config("voc_c4_24k")
