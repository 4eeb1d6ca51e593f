"""The torchvision transfer engine (issue 5): every task family trains and evaluates on CPU, resume
is exact, the evaluators give the right numbers, and (slow) Mask R-CNN FPN actually learns.

The family tests run the real path (`plan_transfer` -> `run_transfer` -> the engine -> a result
record) on tiny synthetic datasets (6 train / 3 val images of 96x128) for 2 iterations. To keep each
under a few CPU seconds the RoI heads are shrunk through keys the task configs do not spell out
(`SMALL_HEADS`, set on the plan's config; the engine reads them with Detectron2's defaults otherwise):
fewer sampled RoIs and proposals, narrower FPN / box / mask / keypoint heads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from detco_bench.transfer import plan_transfer, run_transfer
from detco_bench.transfer_config import set_key

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

TINY_OPTS = [
    "SOLVER.MAX_ITER", "2",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(1,)",
    "INPUT.MIN_SIZE_TRAIN", "(80, 96)",
    "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.PRECISE_BN.NUM_ITER", "1",
]  # fmt: skip

SMALL_HEADS: dict[str, Any] = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 128,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 64,
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 500,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 50,
    "TEST.DETECTIONS_PER_IMAGE": 20,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": [64, 64],
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 64,
}
#: C4: res5 runs on every sampled RoI, so fewer RoIs and an 8x8 RoIAlign (res5 output 4x4).
SMALL_C4: dict[str, Any] = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 8,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 20,
}


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _one_thread():
    """Detection training on the shared 2-core test machines is faster and far steadier with one
    OpenMP thread (two threads spin against the other processes' threads); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic COCO / VOC / Cityscapes data, random-init ResNet-18 / ResNet-50 checkpoints in
    torchvision format, and a shared converted-weights cache."""
    from detco_bench.datasets import prepare_cityscapes
    from detco_bench.synthetic import write_synthetic_dataset

    base = tmp_path_factory.mktemp("tv_engine")
    data = base / "data"
    write_synthetic_dataset(data, "all", num_train=6, num_val=3, seed=0, image_size=(96, 128))
    prepare_cityscapes(data)
    paths = {"data": data, "cache": base / "cache", "results": base / "results", "base": base}
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        path = base / f"{arch}.pth"
        torch.save(getattr(torchvision.models, arch)().state_dict(), path)
        paths[arch] = path
    return paths


def make_plan(world: dict[str, Path], task: str, arch: str, out: Path, opts: list[str] | None = None, **kw: Any):
    plan = plan_transfer(
        task,
        world[arch],
        out,
        engine="torchvision",
        opts=list(TINY_OPTS) + list(opts or []),
        device="cpu",
        data_root_dir=world["data"],
        results_dir=world["results"],
        cache_dir=world["cache"],
        **kw,
    )
    assert not plan.problems, plan.problems
    heads = dict(SMALL_HEADS)
    if plan.family in ("c4", "voc_c4"):
        heads.update(SMALL_C4)
    for key, value in heads.items():
        set_key(plan.config, key, value)
    return plan


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Every task family, end to end


FAMILY_CASES = [
    ("coco_c4_12k", "resnet50", ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"), []),
    # also the AMP switch (bf16 autocast on CPU)
    ("coco_fpn_12k", "resnet18", ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"), ["SOLVER.AMP.ENABLED", "True"]),
    # after 2 iterations every score is near the 0.01 prior, under the 0.05 test threshold: with no
    # predictions the metrics would be NaN (as Detectron2 reports them), so keep every detection
    ("retinanet_12k", "resnet18", ("bbox/AP", "bbox/AP50", "bbox/AP75"), ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]),
    ("keypoint_fpn_2x", "resnet18", ("keypoints/AP", "keypoints/AP50", "bbox/AP"), []),
    ("voc_c4_24k", "resnet50", ("bbox/AP", "bbox/AP50", "bbox/AP75"), []),
    ("cityscapes_inst_fpn", "resnet18", ("segm/AP", "segm/AP50"), []),
    ("cityscapes_sem", "resnet50", ("sem_seg/mIoU",), ["INPUT.CROP.SIZE", "(64, 64)"]),
]


@pytest.mark.parametrize("task,arch,metrics,opts", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_family_trains_and_evaluates(
    world: dict[str, Path], tmp_path: Path, task: str, arch: str, metrics: tuple[str, ...], opts: list[str]
) -> None:
    plan = make_plan(world, task, arch, tmp_path / "out", opts)
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "success"
    record = read_record(outcome.record)
    assert record["engine"] == "torchvision"
    assert record["status"] == "success"
    assert record["task"] == f"{task}.synthetic+opts"  # synthetic data, shortened schedule
    for name in metrics:
        assert name in record["metrics"], sorted(record["metrics"])
        assert math.isfinite(record["metrics"][name])
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert any((out / "tb").iterdir())
    state = json.loads((out / "transfer_state.json").read_text())
    assert state["status"] == "success"


def test_semi_supervised_subset(world: dict[str, Path], tmp_path: Path) -> None:
    """--subset 10% of the 6 training images: one image, recorded as coco_fpn_12k@10%."""
    plan = make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "sub", ["SOLVER.MAX_ITER", "1"], subset="10%")
    record = read_record(run_transfer(plan, log=lambda m: None).record)
    assert record["task"] == "coco_fpn_12k@10%.synthetic+opts" and record["engine"] == "torchvision"
    assert "training images: 1 of 1" in (tmp_path / "sub" / "log.txt").read_text()


def test_cli_runs_the_torchvision_engine(world: dict[str, Path], tmp_path: Path) -> None:
    """The same command line as for Detectron2, `--opts` with the schedule and input-size keys."""
    from typer.testing import CliRunner

    from detco_bench.cli import app

    args = [
        "transfer", "--task", "retinanet_12k", "--checkpoint", str(world["resnet18"]), "--out", str(tmp_path / "r"),
        "--engine", "torchvision", "--device", "cpu", "--data-root", str(world["data"]),
        "--results", str(world["results"]), "--cache-dir", str(world["cache"]),
        # a token with spaces is split like a shell would (`--opts 'A 1 B 2'`), so no spaces in "(80,96)"
        "--opts", *[o.replace(" ", "") for o in TINY_OPTS], "SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.001",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "done: record" in result.output
    records = [read_record(p) for p in Path(world["results"]).glob("*.record.json")]
    mine = [r for r in records if r["artifacts"]["output_dir"] == str((tmp_path / "r").resolve())]
    assert mine and mine[0]["engine"] == "torchvision" and mine[0]["status"] == "success"
    cfg = mine[0]["config"]
    assert cfg["SOLVER"]["MAX_ITER"] == 1 and cfg["SOLVER"]["BASE_LR"] == 0.001
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [80, 96]


# --------------------------------------------------------------------------------------------
# Resume


def test_resume_continues_from_saved_iteration_bit_exactly(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted after iteration 3 (checkpoint at 2), the rerun resumes at 2 and ends with the
    same weights as an uninterrupted run; a finished job is then not rerun."""
    import detco_bench.engines.torchvision.train.loop as T

    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"]
    reference = run_transfer(make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "ref", opts), log=lambda m: None)
    assert reference.status == "success"

    out = tmp_path / "resumed"

    def interrupt(done: int, values: dict[str, float]) -> None:
        if done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "LOG_PERIOD", 1)  # log every step, so the rerun must drop step 3 of the first attempt
    monkeypatch.setattr(T, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(make_plan(world, "coco_fpn_12k", "resnet18", out, opts), log=lambda m: None)
    assert (out / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists()
    monkeypatch.setattr(T, "after_step", None)

    plan = make_plan(world, "coco_fpn_12k", "resnet18", out, opts)
    assert plan.state["status"] == "resume" and plan.resume
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "success"
    assert "resuming from model_0000001.pth: 2 iterations done" in (out / "log.txt").read_text()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a = torch.load(out / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert read_record(outcome.record)["run_id"] == plan.run_id

    again = make_plan(world, "coco_fpn_12k", "resnet18", out, opts)
    assert again.state["status"] == "finished"
    assert run_transfer(again, log=lambda m: None).status == "finished"


def _periodic(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("model_[0-9]*.pth"))


def test_keep_checkpoints_prunes_periodic_files_and_resume_stays_exact(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHECKPOINT_PERIOD 1: the default (--keep-checkpoints 1) leaves the newest periodic file and
    model_final.pth. A run interrupted with K=2 and resumed with K=1 prunes the older files after
    its next save and ends with the uninterrupted run's weights."""
    import detco_bench.engines.torchvision.train.loop as T

    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1"]
    ref = tmp_path / "ref"
    assert run_transfer(make_plan(world, "coco_fpn_12k", "resnet18", ref, opts), log=lambda m: None).status == "success"
    assert _periodic(ref) == ["model_0000002.pth"] and (ref / "model_final.pth").is_file()

    out = tmp_path / "resumed"

    def interrupt(done: int, values: dict[str, float]) -> None:
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(make_plan(world, "coco_fpn_12k", "resnet18", out, opts, keep_checkpoints=2), log=lambda m: None)
    assert _periodic(out) == ["model_0000000.pth", "model_0000001.pth"]
    monkeypatch.setattr(T, "after_step", None)

    plan = make_plan(world, "coco_fpn_12k", "resnet18", out, opts)  # K=1 now; the same job
    assert plan.state["status"] == "resume"
    assert run_transfer(plan, log=lambda m: None).status == "success"
    assert _periodic(out) == ["model_0000002.pth"]
    a = torch.load(out / "model_final.pth", weights_only=True)
    b = torch.load(ref / "model_final.pth", weights_only=True)
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key


def test_keep_checkpoints_zero_keeps_every_periodic_file(world: dict[str, Path], tmp_path: Path) -> None:
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1"]
    plan = make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "all", opts, keep_checkpoints=0)
    assert run_transfer(plan, log=lambda m: None).status == "success"
    assert _periodic(tmp_path / "all") == ["model_0000000.pth", "model_0000001.pth"]


# --------------------------------------------------------------------------------------------
# Evaluation only (--eval-weights)


def test_eval_weights_reproduces_the_trained_models_metrics(world: dict[str, Path], tmp_path: Path) -> None:
    """A fine-tuned model evaluated again with --eval-weights gives the training run's final
    metrics exactly, trains nothing, and its record says it only evaluated."""
    trained = run_transfer(make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "train"), log=lambda m: None)
    reference = read_record(trained.record)
    weights = tmp_path / "train" / "model_final.pth"
    plan = make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "eval", eval_weights=weights)
    assert plan.protocol["protocol"] == "adapted"
    assert plan.protocol["differences"][0].startswith("evaluation only")
    assert plan.protocol["eval_weights"]["path"] == str(weights.resolve())
    record = read_record(run_transfer(plan, log=lambda m: None).record)
    assert record["status"] == "success"
    assert record["metrics"].keys() == reference["metrics"].keys()
    for name, value in reference["metrics"].items():
        assert record["metrics"][name] == pytest.approx(value, nan_ok=True), name
    assert not (tmp_path / "eval" / "model_final.pth").exists()  # nothing was trained
    assert "evaluation only" in (tmp_path / "eval" / "log.txt").read_text()
    assert not (tmp_path / "eval" / "metrics.jsonl").exists() or "total_loss" not in (
        tmp_path / "eval" / "metrics.jsonl"
    ).read_text()


def test_eval_weights_must_be_a_model_checkpoint(world: dict[str, Path], tmp_path: Path) -> None:
    from detco_bench.errors import UserError

    with pytest.raises(UserError, match="not found"):
        make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "a", eval_weights=tmp_path / "missing.pth")
    torch.save({"iteration": 3}, tmp_path / "no_model.pth")
    with pytest.raises(UserError, match="not a model checkpoint"):
        make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "b", eval_weights=tmp_path / "no_model.pth")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# Evaluators on hand-made predictions


def test_voc_ap_hand_computed_case() -> None:
    """One class, two images; GT (VOC 1-based inclusive): img1 [1,1,10,10]; img2 [1,1,10,10] and a
    difficult [21,21,30,30]. Detections: img1 [1,1,10,10] 0.9 (TP), img1 same box 0.8 (duplicate:
    FP), img2 [21,21,30,30] 0.7 (on the difficult box: ignored), img2 [2,2,11,11] 0.6 (IoU 81/119 =
    0.68: TP up to IoU 0.65, FP from 0.70). npos = 2.
    IoU 0.5: recall [.5 .5 .5 1], precision [1 .5 .5 2/3]: VOC07 11-point AP = (6 * 1 + 5 * 2/3) / 11
    = 0.84848; area under the envelope = .5 * 1 + .5 * 2/3 = 0.83333.
    IoU 0.75: recall stays .5: VOC07 AP = 6/11 = 0.54545.
    AP over IoU .50:.95 (VOC07): 4 thresholds at 0.84848 (.50-.65), 6 at 0.54545 -> 0.66667."""
    from detco_bench.engines.torchvision.evaluate.voc import voc_ap, voc_eval, voc_evaluate

    gt = {
        "img1": [{"name": "a", "difficult": 0, "bbox": [1, 1, 10, 10]}],
        "img2": [
            {"name": "a", "difficult": 0, "bbox": [1, 1, 10, 10]},
            {"name": "a", "difficult": 1, "bbox": [21, 21, 30, 30]},
            {"name": "b", "difficult": 0, "bbox": [40, 40, 50, 50]},
        ],
    }
    dets = [
        ("img1", 0.9, 1, 1, 10, 10),
        ("img1", 0.8, 1, 1, 10, 10),
        ("img2", 0.7, 21, 21, 30, 30),
        ("img2", 0.6, 2, 2, 11, 11),
    ]
    rec, prec, ap07 = voc_eval(dets, gt, "a", 0.5, use_07_metric=True)
    np.testing.assert_allclose(rec, [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 0.5, 2 / 3])
    assert ap07 == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_eval(dets, gt, "a", 0.5, use_07_metric=False)[2] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_eval(dets, gt, "a", 0.75, use_07_metric=True)[2] == pytest.approx(6 / 11)
    assert voc_ap(np.array([]), np.array([]), True) == 0.0

    tagged = [(0, *d) for d in dets]
    metrics = voc_evaluate(tagged, gt, ["a", "b"], is_2007=True)
    # class "b" has one GT box and no detection: AP 0, halving the class mean.
    assert metrics["bbox/AP50"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11 / 2)
    assert metrics["bbox/AP75"] == pytest.approx(100 * 6 / 11 / 2)
    assert metrics["bbox/AP"] == pytest.approx(100 * (4 * (6 + 5 * 2 / 3) / 11 + 6 * 6 / 11) / 10 / 2)


def test_voc_detections_use_voc_pixel_convention() -> None:
    from detco_bench.engines.torchvision.evaluate.voc import voc_detections

    out = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.04, 5.06, 20.0, 30.0]]),
        "scores": torch.tensor([0.98765, 0.5]),
        "labels": torch.tensor([1, 2]),
    }
    dets = voc_detections({"image_id": "2007_000001"}, out, label_offset=1)
    assert dets[0] == (0, "2007_000001", 0.988, 1.0, 1.0, 10.0, 10.0)
    assert dets[1] == (1, "2007_000001", 0.5, 5.0, 6.1, 20.0, 30.0)


def test_coco_perfect_predictions_score_100(world: dict[str, Path]) -> None:
    """Ground truth turned into predictions (through the engine's result conversion: boxes, mask
    probabilities pasted at full size, continuous keypoints) scores AP 100 with COCOeval."""
    from detco_bench.datasets import DatasetSpec
    from detco_bench.engines.torchvision.data.coco import load_coco
    from detco_bench.engines.torchvision.data.images import annotation_mask
    from detco_bench.engines.torchvision.evaluate.coco import coco_evaluate, coco_results
    from detco_bench.engines.torchvision.settings import Settings

    coco = world["data"] / "coco"
    for kind, keypoints in (("instances", False), ("person_keypoints", True)):
        json_file = coco / "annotations" / f"{kind}_val2017.json"
        spec = DatasetSpec(
            name="val", kind="coco", split="val", image_root=str(coco / "val2017"), json_file=str(json_file),
            keypoints=keypoints,
        )  # fmt: skip
        if keypoints:
            spec.meta = {"keypoint_names": ["top", "right", "bottom", "left"], "keypoint_oks_sigmas": [0.05] * 4}
        records, meta = load_coco(spec, Settings({}), keypoints)
        results = []
        for rec in records:
            anns = rec["annotations"]
            masks = torch.stack(
                [torch.from_numpy(annotation_mask(a["segmentation"], rec["height"], rec["width"])) for a in anns]
            )
            output = {
                "boxes": torch.tensor([a["bbox"] for a in anns]),
                "scores": torch.linspace(0.9, 0.5, len(anns)),
                "labels": torch.tensor([a["category"] + 1 for a in anns]),
                "masks": masks[:, None].float(),
            }
            if keypoints:
                output["keypoints"] = torch.tensor([a["keypoints"] for a in anns]).reshape(len(anns), -1, 3)
            results.extend(coco_results(rec, output, meta, label_offset=1))
        types = ["bbox", "keypoints"] if keypoints else ["bbox", "segm"]
        metrics = coco_evaluate(str(json_file), results, types, meta.classes, meta.keypoint_oks_sigmas)
        for t in types:
            assert metrics[f"{t}/AP"] == pytest.approx(100.0), (t, metrics)
            assert metrics[f"{t}/AP50"] == pytest.approx(100.0)


def test_coco_no_predictions_is_nan_as_in_detectron2(world: dict[str, Path]) -> None:
    """Detectron2's COCOEvaluator reports every metric of an IoU type as NaN when the model made no
    prediction ("No predictions from the model!"); the engine reports the same."""
    from detco_bench.engines.torchvision.evaluate.coco import coco_evaluate

    json_file = world["data"] / "coco" / "annotations" / "instances_val2017.json"
    metrics = coco_evaluate(str(json_file), [], ["bbox", "segm"], ["a"])
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    assert sorted(metrics) == sorted(f"{t}/{n}" for t in ("bbox", "segm") for n in names)
    assert all(math.isnan(v) for v in metrics.values())


# --------------------------------------------------------------------------------------------
# Solver, resizing, sampling, augmentation


def test_lr_schedule_is_detectron2_warmup_multistep() -> None:
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.engines.torchvision.train.solver import lr_factor

    s = Settings({"SOLVER": {"MAX_ITER": 100, "STEPS": [60, 80, 200], "WARMUP_ITERS": 10, "WARMUP_FACTOR": 0.001}})
    assert lr_factor(0, s) == pytest.approx(0.001)
    assert lr_factor(5, s) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, s) == pytest.approx(1.0)
    assert lr_factor(59, s) == pytest.approx(1.0)
    assert lr_factor(60, s) == pytest.approx(0.1)
    assert lr_factor(80, s) == pytest.approx(0.01)
    assert lr_factor(99, s) == pytest.approx(0.01)  # the step at 200 > MAX_ITER is dropped


def test_shortest_edge_size_is_detectron2_rule() -> None:
    from detco_bench.engines.torchvision.data.images import shortest_edge_size

    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
    assert shortest_edge_size(1024, 2048, 1024, 2048) == (1024, 2048)
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)


def test_train_batches_resume_and_group_by_aspect_ratio() -> None:
    from itertools import islice

    from detco_bench.engines.torchvision.data.batching import TrainBatches

    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0]
    full = list(islice(iter(TrainBatches(groups, 2, seed=3, rank=1, world=2)), 12))
    later = list(islice(iter(TrainBatches(groups, 2, seed=3, rank=1, world=2, start_iter=5)), 7))
    assert later == full[5:]
    for batch in full:
        assert len({groups[i] for i, _ in batch}) == 1
    other_rank = list(islice(iter(TrainBatches(groups, 2, seed=3, rank=0, world=2)), 12))
    assert other_rank != full


def test_keypoints_move_with_the_image_and_swap_on_flip(world: dict[str, Path]) -> None:
    """Resize + horizontal flip on tv_tensors: every visible keypoint stays in its (flipped) box,
    and after the flip map 'left' is still the leftmost extreme point, 'right' the rightmost."""
    from detco_bench.datasets import DatasetSpec
    from detco_bench.engines.torchvision.data.coco import load_coco
    from detco_bench.engines.torchvision.data.datasets import TrainDataset
    from detco_bench.engines.torchvision.settings import Settings

    coco = world["data"] / "coco"
    spec = DatasetSpec(
        name="t", kind="coco", split="train", image_root=str(coco / "train2017"),
        json_file=str(coco / "annotations" / "person_keypoints_train2017.json"), keypoints=True,
        meta={"keypoint_names": ["top", "right", "bottom", "left"], "keypoint_flip_map": [["left", "right"]]},
    )  # fmt: skip
    settings = Settings({"INPUT": {"MIN_SIZE_TRAIN": [150], "MAX_SIZE_TRAIN": 400}})
    records, meta = load_coco(spec, settings, keypoints=True)
    assert meta.keypoint_flip == [0, 3, 2, 1]
    ds = TrainDataset(records, settings, meta, task="detection", mask_on=True, keypoint_on=True)
    flipped_seen = unflipped_seen = 0
    for seed in range(6):
        image, target = ds[(0, seed)]
        assert image.shape[-2] == 150  # 96x128 -> short side 150
        kp = target["keypoints"]
        boxes = target["boxes"]
        vis = kp[..., 2] == 2  # hidden (1) extreme points may lie outside the visible mask's box
        inside = (
            (kp[..., 0] >= boxes[:, None, 0] - 1) & (kp[..., 0] <= boxes[:, None, 2] + 1)
            & (kp[..., 1] >= boxes[:, None, 1] - 1) & (kp[..., 1] <= boxes[:, None, 3] + 1)
        )  # fmt: skip
        assert bool(inside[vis].all())
        left, right = kp[:, 3], kp[:, 1]
        both = (left[:, 2] > 0) & (right[:, 2] > 0)
        assert bool((left[both, 0] <= right[both, 0]).all())
        # masks follow the boxes
        for m, b in zip(target["masks"], boxes, strict=True):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert abs(xs.min().item() - b[0].item()) <= 2 and abs(xs.max().item() + 1 - b[2].item()) <= 2
        original_x0 = records[0]["annotations"][0]["bbox"][0] * 150 / 96
        if abs(boxes[0, 0].item() - original_x0) < 1e-3:
            unflipped_seen += 1
        else:
            flipped_seen += 1
    assert flipped_seen and unflipped_seen


# --------------------------------------------------------------------------------------------
# Models


def test_c4_model_is_detectron2_res5_roi_heads() -> None:
    """res4 trunk -> RPN on one map (15 anchors) -> 14x14 aligned RoIAlign -> res5 + extra BN ->
    mean -> box predictor; the mask branch reuses the box branch's res5 (no separate weights)."""
    from detco_bench.engines.torchvision.models.backbones import C4Trunk
    from detco_bench.engines.torchvision.models.build import build_model
    from detco_bench.engines.torchvision.models.c4 import Res5Head
    from detco_bench.engines.torchvision.models.poolers import D2RoIPooler
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.transfer_config import effective_config

    cfg = effective_config("coco_c4_12k")
    set_key(cfg, "MODEL.RESNETS.NORM", "BN")
    set_key(cfg, "MODEL.RPN.POST_NMS_TOPK_TEST", 10)
    model = build_model("c4", Settings(cfg), "resnet50", None, num_classes=3)
    assert isinstance(model.backbone, C4Trunk) and model.backbone.out_channels == 1024
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    heads = model.roi_heads
    assert isinstance(heads.box_roi_pool, D2RoIPooler) and heads.box_roi_pool.output_size == (14, 14)
    assert isinstance(heads.box_head, Res5Head) and isinstance(heads.box_head.norm, torch.nn.BatchNorm2d)
    assert heads.shared_res5 and heads.has_mask()
    assert not any(k.startswith("roi_heads.mask_head") for k in model.state_dict())
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[-2:] == (64, 80)


def test_backbone_weights_are_loaded_and_trainable(tmp_path: Path) -> None:
    from detco_bench.engines.torchvision.models.build import build_model
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.transfer_config import effective_config

    torch.manual_seed(1)
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    cfg = effective_config("coco_fpn_12k")
    set_key(cfg, "MODEL.RESNETS.NORM", "BN")
    model = build_model("fpn", Settings(cfg), "resnet18", state, num_classes=4)
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])
    assert all(p.requires_grad for p in body.parameters())
    assert isinstance(body.bn1, torch.nn.BatchNorm2d)
    assert model.backbone.fpn.inner_blocks[0][1].__class__ is torch.nn.BatchNorm2d  # FPN.NORM BN


# --------------------------------------------------------------------------------------------
# DDP on CPU (gloo)


def test_two_process_gloo_ddp(world: dict[str, Path], tmp_path: Path) -> None:
    """`--gpus 2`-style launch on CPU: two spawned processes join a gloo group, each trains on its
    share of the batch and evaluates its shard; rank 0 writes the record."""
    plan = make_plan(world, "coco_fpn_12k", "resnet18", tmp_path / "ddp")
    plan.gpus = 2  # the CLI allows one CPU process; the engine's launcher handles any world size
    outcome = run_transfer(plan, log=lambda m: None)
    assert outcome.status == "success"
    record = read_record(outcome.record)
    assert record["status"] == "success" and math.isfinite(record["metrics"]["bbox/AP"])
    assert "world size 2" in (tmp_path / "ddp" / "log.txt").read_text()


# --------------------------------------------------------------------------------------------
# Learning


LEARN_OPTS = [
    "SOLVER.MAX_ITER", "200",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.BASE_LR", "0.02",
    "SOLVER.WARMUP_ITERS", "20",
    "SOLVER.STEPS", "(160,)",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "INPUT.MIN_SIZE_TRAIN", "(112, 128, 144)",
    "INPUT.MAX_SIZE_TRAIN", "200",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "200",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.PRECISE_BN.NUM_ITER", "10",
]  # fmt: skip
LEARN_HEADS: dict[str, Any] = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 64,
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 200,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 500,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 100,
    "TEST.DETECTIONS_PER_IMAGE": 50,
}
LEARN_MIN_AP50 = 10.0


@pytest.mark.slow
def test_mask_rcnn_fpn_learns_synthetic_shapes(tmp_path: Path) -> None:
    """The loop is wired right, not just running: Mask R-CNN R18-FPN from a RANDOM-INIT backbone
    (torchvision's default init, seed 0), trained 200 iterations (batch 4, lr 0.02, warm-up 20,
    x0.1 at 160; 128 px multi-scale; the shrunk heads of LEARN_HEADS) on 32 synthetic COCO images,
    evaluated on 16 others.

    Measured (CPU, 1 thread, torch 2.14.1 / torchvision 0.29.1): bbox AP50 27.2 (AP 15.1, segm AP50
    18.8 with Detectron2's binary mask targets and pasting; 25.3 before them) in about 250 s wall on
    the shared 2-core machine; the same model after 2 iterations scores bbox AP50 0.9. Threshold:
    bbox AP50 >= 10 (less than half the measured value, ten times the untrained one).
    """
    from detco_bench.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, "coco", num_train=32, num_val=16, seed=0, image_size=(128, 128))
    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    plan = plan_transfer(
        "coco_fpn_12k",
        checkpoint,
        tmp_path / "out",
        engine="torchvision",
        opts=LEARN_OPTS,
        device="cpu",
        data_root_dir=data,
        results_dir=tmp_path / "results",
        cache_dir=tmp_path / "cache",
    )
    for key, value in LEARN_HEADS.items():
        set_key(plan.config, key, value)
    record = read_record(run_transfer(plan, log=lambda m: None).record)
    metrics = record["metrics"]
    assert metrics["bbox/AP50"] >= LEARN_MIN_AP50, metrics
    assert metrics["segm/AP50"] > 2.0, metrics
