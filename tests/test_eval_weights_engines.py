"""A model fine-tuned by the built-in engine, evaluated by Detectron2's engine (``--eval-weights``):
the weights cross over through `weights_map`, and both engines report the same detections.

Needs detectron2 (marker `detectron2`, skipped with the reason when it is not importable).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detco_bench.records import read_record
from detco_bench.synthetic import write_synthetic_dataset
from detco_bench.transfer import plan_transfer, run_transfer
from tests.conftest import save_random_resnet

pytestmark = [
    pytest.mark.detectron2,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # pycocotools + numpy 2
]

#: A short schedule at 128 px; every detection above score 0.05 is kept, so the two lists are long.
OPTS = [
    "SOLVER.MAX_ITER", "20", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.02", "SOLVER.STEPS", "(16,)",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "20", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128", "TEST.PRECISE_BN.ENABLED", "False",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
]  # fmt: skip


def _plan(tmp: Path, out: str, engine: str, **kw: object):  # noqa: ANN202
    plan = plan_transfer("coco_fpn_12k", tmp / "r18.pth", tmp / out, engine=engine, device="cpu",
                         data_root_dir=tmp / "data", cache_dir=tmp / "cache", results_dir=tmp / "records",
                         opts=list(OPTS), **kw)
    assert not plan.problems, plan.problems
    return plan


def _detections(out: Path) -> list[dict[str, object]]:
    (path,) = (out / "inference").rglob("coco_instances_results.json")
    return json.loads(path.read_text())


def test_eval_weights_across_engines(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "data", "coco", num_train=8, num_val=4, seed=0, image_size=(128, 128))
    save_random_resnet(tmp_path / "r18.pth", "resnet18")
    trained = run_transfer(_plan(tmp_path, "tv", "torchvision"), log=lambda m: None)
    weights = tmp_path / "tv" / "model_final.pth"
    ours = read_record(run_transfer(_plan(tmp_path, "tv_eval", "torchvision", eval_weights=weights),
                                    log=lambda m: None).record)
    theirs = read_record(run_transfer(_plan(tmp_path, "d2_eval", "detectron2", eval_weights=weights),
                                      log=lambda m: None).record)
    assert theirs.engine == "detectron2" and theirs.status == "success"
    assert (tmp_path / "d2_eval" / "eval_weights_detectron2.pth").is_file()
    assert not (tmp_path / "d2_eval" / "model_final.pth").exists()  # nothing trained
    protocol = theirs.config["DETCO_BENCH"]["protocol"]
    assert protocol["protocol"] == "adapted" and protocol["differences"][0].startswith("evaluation only")
    assert ours.metrics == pytest.approx(read_record(trained.record).metrics, nan_ok=True)

    # The same model in both engines: the same detections per image (the engines resize the test
    # image with different filters, PIL vs torchvision, so boxes and scores agree closely, not bitwise).
    mine, detectron2 = _detections(tmp_path / "tv_eval"), _detections(tmp_path / "d2_eval")
    assert mine and len(detectron2) == pytest.approx(len(mine), rel=0.1)
    for metric in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"):
        assert theirs.metrics[metric] == pytest.approx(ours.metrics[metric], abs=1.0), metric
