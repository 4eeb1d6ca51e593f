"""The Detectron2 engine, end to end on CPU with synthetic data (needs detectron2: marker
`detectron2`, skipped with a reason when it is not importable).

Every task family trains a few iterations on a tiny synthetic dataset in the right layout,
evaluates with its real evaluator (pycocotools, detectron2's VOC evaluator, cityscapesScripts) and
writes a result record with finite metrics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from detco_bench.records import read_record
from detco_bench.synthetic import write_synthetic_dataset
from detco_bench.tasks import TASKS
from detco_bench.transfer import SlurmSpec, TransferPlan, plan_transfer, read_state, run_transfer
from detco_bench.transfer_config import effective_config, flatten, load_config_file
from tests.conftest import save_random_resnet

pytestmark = pytest.mark.detectron2

#: Small enough for a few CPU seconds per iteration; the protocol is otherwise unchanged.
SMOKE_OPTS = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "TEST.PRECISE_BN.NUM_ITER",
    "1",
    "TEST.DETECTIONS_PER_IMAGE",
    "10",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
    "100",
]
SEM_OPTS = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64, 128)",
    "INPUT.MAX_SIZE_TRAIN",
    "256",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "INPUT.CROP.SIZE",
    "[64, 64]",
]

FAMILY_TASKS = [
    "coco_c4_12k",
    "coco_fpn_12k",
    "retinanet_12k",
    "keypoint_fpn_2x",
    "voc_c4_24k",
    "cityscapes_inst_fpn",
    "cityscapes_sem",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detco_bench.datasets import prepare_cityscapes

    root = tmp_path_factory.mktemp("d2data")
    for layout in ("coco", "voc", "cityscapes"):
        write_synthetic_dataset(root, layout, num_train=8, num_val=4, seed=0, image_size=(128, 128), force=True)
    prepare_cityscapes(root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_resnet(tmp_path_factory.mktemp("d2ck") / "resnet50.pth", "resnet50")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("d2cache")


def _plan(
    task: str,
    out: Path,
    data_root: Path,
    checkpoint: Path,
    cache: Path,
    results: Path,
    opts: list[str] | None = None,
    **kw: Any,
) -> TransferPlan:
    extra = SEM_OPTS if task == "cityscapes_sem" else []
    kw.setdefault("device", "cpu")
    return plan_transfer(
        task,
        checkpoint,
        out,
        engine="detectron2",
        opts=SMOKE_OPTS + extra + (opts or []),
        data_root_dir=data_root,
        cache_dir=cache,
        results_dir=results,
        method="detco",
        **kw,
    )


def test_base_defaults_are_detectron2_defaults() -> None:
    from detco_bench.transfer_config import detectron2_defaults

    d2 = detectron2_defaults()
    assert d2 is not None
    for key, value in flatten(load_config_file("Base-Defaults.yaml")).items():
        assert key in d2, key
        expected = list(d2[key]) if isinstance(d2[key], tuple) else d2[key]
        assert value == expected, (key, value, expected)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_config_merges_into_detectron2(task: str, tmp_path: Path) -> None:
    from detco_bench.engines.detectron2.config import build_cfg

    plan = plan_transfer(task, None, tmp_path / "o", engine="detectron2", device="cpu", data_root_dir=tmp_path)
    cfg = build_cfg(plan)
    assert cfg.SOLVER.MAX_ITER == plan.config["SOLVER"]["MAX_ITER"]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    # every key of our effective config is a detectron2 key (or one of ours)
    assert set(flatten(effective_config(task))) <= set(flatten(yaml_of(cfg)))


def yaml_of(cfg: Any) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(cfg.dump())


def test_model_components(tmp_path: Path) -> None:
    from detectron2.modeling import build_model

    from detco_bench.engines.detectron2.config import build_cfg
    from detco_bench.engines.detectron2.heads import register_components

    register_components()
    register_components()  # idempotent
    c4 = build_model(
        build_cfg(
            plan_transfer("coco_c4_1x", None, tmp_path / "a", engine="detectron2", device="cpu", data_root_dir=tmp_path)
        )
    )
    norm = c4.roi_heads.res5.norm
    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.num_features == 2048
    assert list(dict(c4.roi_heads.res5.named_children()))[-1] == "norm"  # after the last res5 block
    sem = build_model(
        build_cfg(
            plan_transfer(
                "cityscapes_sem", None, tmp_path / "b", engine="detectron2", device="cpu", data_root_dir=tmp_path
            )
        )
    )
    head = sem.sem_seg_head
    assert [c.dilation for c in head.convs] == [(6, 6), (6, 6)]
    assert [c.out_channels for c in head.convs] == [256, 256] and head.predictor.out_channels == 19
    assert all(isinstance(c.norm, torch.nn.BatchNorm2d) for c in head.convs)
    sem.eval()
    with torch.no_grad():
        features = sem.backbone(torch.zeros(1, 3, 128, 160))
        assert features["res5"].shape[-2:] == (8, 10)  # output stride 16 (dilated res5)
        out = sem([{"image": torch.zeros(3, 128, 160), "height": 128, "width": 160}])
    assert out[0]["sem_seg"].shape == (19, 128, 160)


@pytest.mark.parametrize("task", FAMILY_TASKS)
def test_family_trains_evaluates_and_records(
    task: str, data_root: Path, checkpoint: Path, cache: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    plan = _plan(task, tmp_path / "out", data_root, checkpoint, cache, results)
    assert plan.problems == [] and plan.engine == "detectron2"
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "success"
    record = read_record(outcome.record)
    assert record.status == "success" and record.engine == "detectron2" and record.task == f"{task}.synthetic+opts"
    for metric in TASKS[task].metrics:
        assert metric in record.metrics, (metric, sorted(record.metrics))
        assert math.isfinite(record.metrics[metric])
    assert record.config["DETCO_BENCH"]["device"] == "cpu"
    assert record.config["DETCO_BENCH"]["scaling"]["rule"] == "linear"
    assert record.checkpoint.method == "detco"
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "linear scaling rule" in log and "Running precise-BN" in log
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_interrupted_job_resumes_and_finished_job_is_not_rerun(
    data_root: Path, checkpoint: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detectron2.engine import DefaultTrainer

    results = tmp_path / "results"
    out = tmp_path / "out"
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"]
    original = DefaultTrainer.test.__func__  # type: ignore[attr-defined]

    def crash(cls: Any, cfg: Any, model: Any, evaluators: Any = None) -> Any:
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(DefaultTrainer, "test", classmethod(crash))
    plan = _plan("coco_fpn_12k", out, data_root, checkpoint, cache, results, opts)
    with pytest.raises(RuntimeError, match="killed during evaluation"):
        run_transfer(plan, log=lambda m: None)
    assert read_record(plan.record_path).status == "failed"
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    monkeypatch.setattr(DefaultTrainer, "test", classmethod(original))
    resumed = _plan("coco_fpn_12k", out, data_root, checkpoint, cache, results, opts)
    assert resumed.state["status"] == "resume" and resumed.run_id == plan.run_id
    outcome = run_transfer(resumed, log=lambda m: None)
    assert outcome.status == "success" and outcome.record == plan.record_path
    assert "Starting training from iteration 3" in (out / "log.txt").read_text()  # nothing retrained
    assert read_record(plan.record_path).status == "success"
    finished = _plan("coco_fpn_12k", out, data_root, checkpoint, cache, results, opts)
    assert run_transfer(finished).status == "finished"


def test_slurm_path_runs_through_submitit(
    data_root: Path, checkpoint: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --launcher slurm path with submitit's local executor: the pickled job really runs the
    engine in another process and writes the record."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("DETCO_BENCH_SUBMITIT_CLUSTER", "local")
    out = tmp_path / "out"
    plan = _plan(
        "retinanet_12k",
        out,
        data_root,
        checkpoint,
        cache,
        tmp_path / "results",
        launcher="slurm",
        slurm=SlurmSpec(time_min=10, cpus_per_task=1),
    )
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "submitted" and outcome.job_id
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = read_state(out) or {}
        if state.get("status") in ("success", "failed"):
            break
        time.sleep(2)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (out / "slurm").rglob("*.err"))
    assert state.get("status") == "success", logs
    record = read_record(plan.record_path)
    assert record.status == "success" and record.config["DETCO_BENCH"]["launcher"] == "slurm"
    assert all(math.isfinite(record.metrics[m]) for m in TASKS["retinanet_12k"].metrics)
