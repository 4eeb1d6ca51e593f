"""Both engines on the same jobs: the metrics each reports and its CPU seconds per iteration.

    python benchmarks/engine_agreement.py [--families fpn c4 ...] [--seeds 3] [--first-seed 0]
                                          [--iters 100] [--out runs/engine-agreement] [--threads 2]

For every task family, the same synthetic data, the same random-init ResNet checkpoint and the same
effective config (the task's YAML chain with one set of --opts: a short schedule at 128-256 px,
lighter RoI sampling and narrower heads) run through Detectron2 and through the built-in torchvision
engine, seeds K..K+N-1 each (K = --first-seed, 0 by default), on the same path as ``detco-bench
transfer`` (`plan_transfer` -> `run_transfer`). It prints, per family and metric, each engine's mean
+- std over the seeds, the gap (torchvision - Detectron2) and whether it is within max(seed std, 1 AP
point); and each engine's median seconds per training iteration (from its own log: ``metrics.jsonl``
/ detectron2's ``metrics.json``, first logged iteration left out). Both engines draw the same
data order from a seed (their flips and other augmentation draws differ), so runs of one seed start
on the same trajectory: it also prints up to which logged iteration each seed's two runs stayed in
lockstep (total losses within 5 %), which says how soon training's chaos separates them.

Without detectron2 importable the Detectron2 column is "-" and only the built-in engine runs.
Finished jobs are reused on a rerun (each job has its own output folder), so an interrupted
benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detco_bench.datasets import prepare_cityscapes  # noqa: E402
from detco_bench.engines import get_engine  # noqa: E402
from detco_bench.errors import UserError  # noqa: E402
from detco_bench.records import read_record  # noqa: E402
from detco_bench.synthetic import write_synthetic_dataset  # noqa: E402
from detco_bench.transfer import plan_transfer, run_transfer  # noqa: E402
from tests.test_engine_training_parity import FAMILIES  # noqa: E402  (family -> task, ResNet)

#: The headline metrics compared per family.
METRICS: dict[str, tuple[str, ...]] = {
    "fpn": ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"),
    "c4": ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"),
    "retinanet": ("bbox/AP", "bbox/AP50"),
    "keypoint": ("bbox/AP", "keypoints/AP", "keypoints/AP50"),
    "voc_c4": ("bbox/AP", "bbox/AP50", "bbox/AP75"),
    "cityscapes_inst": ("segm/AP", "segm/AP50"),
    "cityscapes_sem": ("sem_seg/mIoU",),
}
ENGINES = ("torchvision", "detectron2")
GAP_FLOOR = 1.0  # one AP / mIoU point
LOCKSTEP_TOLERANCE = 0.05  # relative difference of the logged total losses (20-iteration medians)


def schedule_opts(iters: int, family: str) -> list[str]:
    """The one set of --opts both engines run: a short schedule at small sizes, lighter sampling."""
    opts = [
        "SOLVER.MAX_ITER", str(iters), "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.02",
        "SOLVER.STEPS", f"({int(iters * 0.8)},)", "SOLVER.WARMUP_ITERS", str(max(1, iters // 10)),
        "SOLVER.CHECKPOINT_PERIOD", str(iters), "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "1000", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "300",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "500", "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16" if family in ("c4", "voc_c4") else "128",
        # heads a quarter wide: the mask head and the 256-channel FPN convs dominate a CPU iteration
        "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "256", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
        "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(128, 128, 128, 128)", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64",
    ]  # fmt: skip
    if family == "retinanet":
        # From a random init RetinaNet's scores start at its prior (0.01) and stay under the 0.05
        # test threshold for hundreds of iterations: neither engine would detect anything.
        opts += ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    if family == "cityscapes_sem":
        opts += ["INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "128",
                 "INPUT.MAX_SIZE_TEST", "256", "INPUT.CROP.SIZE", "[96, 96]"]
    else:
        opts += ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "128",
                 "INPUT.MAX_SIZE_TEST", "256"]
    return opts


def training_log(out: Path, engine: str) -> dict[int, dict[str, float]]:
    """The engine's own training log, by completed iterations: ``metrics.jsonl`` ("step") or
    detectron2's ``metrics.json`` ("iteration", 0-based). Each loss there is the median over the
    last 20 iterations in both engines. Empty when the job left none."""
    name, key, offset = ("metrics.jsonl", "step", 0) if engine == "torchvision" else ("metrics.json", "iteration", 1)
    path = out / name
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r[key]) + offset: r for r in rows if "total_loss" in r and key in r}


def seconds_per_iter(log: dict[int, dict[str, float]]) -> float:
    """Median training seconds per iteration of one job's log (first entry left out)."""
    times = [r["time"] for _, r in sorted(log.items()) if isinstance(r.get("time"), (int, float))][1:]
    return statistics.median(times) if times else math.nan


def lockstep(ours: dict[int, dict[str, float]], theirs: dict[int, dict[str, float]]) -> int:
    """The last logged iteration up to which the two engines' logged total losses (same seed, hence
    the same data order; each engine its own flips) agree within LOCKSTEP_TOLERANCE: how long two
    runs follow one trajectory before their different draws and float rounding, amplified by
    training, separate them."""
    last = 0
    for step in sorted(set(ours) & set(theirs)):
        a, b = ours[step]["total_loss"], theirs[step]["total_loss"]
        if abs(a - b) > LOCKSTEP_TOLERANCE * abs(b):
            break
        last = step
    return last


def run_one(family: str, engine: str, seed: int, args: argparse.Namespace, data: Path,
            checkpoints: dict[str, Path]) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Train and evaluate one job (or read back a finished one): its metrics and its training log."""
    task, arch = FAMILIES[family]
    out = args.out / "jobs" / f"{family}-{engine}-s{seed}"
    plan = plan_transfer(task, checkpoints[arch], out, engine=engine, device="cpu", seed=seed, data_root_dir=data,
                         results_dir=args.out / "records", cache_dir=args.out / "cache",
                         opts=schedule_opts(args.iters, family))
    if plan.problems:
        raise UserError(f"{family} ({engine}): " + "; ".join(plan.problems))
    outcome = run_transfer(plan, log=lambda m: None)
    record = read_record(outcome.record)
    return dict(record.metrics), training_log(out, engine)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):6.2f} +- {statistics.pstdev(values):4.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds per engine")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed (runs can be split over processes; finished jobs are read back)")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/engine-agreement"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    torch.set_num_threads(args.threads)
    missing = get_engine("detectron2").available()
    engines = list(ENGINES) if missing is None else ["torchvision"]
    if missing:
        print(f"Detectron2 column left out: {missing}")

    data = args.out / "data"
    if not (args.out / "data.done").is_file():
        write_synthetic_dataset(data, "all", num_train=32, num_val=16, seed=0, image_size=(128, 256), force=True)
        prepare_cityscapes(data)
        (args.out / "data.done").touch()
    checkpoints = {}
    for arch in sorted({a for _, a in FAMILIES.values()}):
        path = args.out / f"random_{arch}.pth"
        if not path.is_file():
            torch.manual_seed(0)
            torch.save(getattr(torchvision.models, arch)().state_dict(), path)
        checkpoints[arch] = path

    t0 = time.time()
    metrics: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    speed: dict[tuple[str, str], list[float]] = defaultdict(list)
    in_lockstep: dict[str, list[int]] = defaultdict(list)
    for family in args.families:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            logs: dict[str, dict[int, dict[str, float]]] = {}
            for engine in engines:  # engines alternate, so both see the same machine load
                values, logs[engine] = run_one(family, engine, seed, args, data, checkpoints)
                sec = seconds_per_iter(logs[engine])
                for name in METRICS[family]:
                    if math.isfinite(values.get(name, math.nan)):
                        metrics[(family, name, engine)].append(values[name])
                speed[(family, engine)].append(sec)
                print(f"[{time.time() - t0:6.0f} s] {family} {engine} seed {seed}: "
                      + ", ".join(f"{k} {values.get(k, math.nan):.2f}" for k in METRICS[family])
                      + f"; {sec:.3f} s/iter", flush=True)
            if len(logs) == 2:
                in_lockstep[family].append(lockstep(logs["torchvision"], logs["detectron2"]))

    print(f"\nengine agreement: {args.seeds} seeds, {args.iters} iterations, CPU, {args.threads} threads, "
          f"{time.time() - t0:.0f} s in all")
    print(f"{'family':16s} {'metric':15s} {'torchvision':>16s} {'detectron2':>16s} {'gap':>7s}  within")
    for family in args.families:
        for name in METRICS[family]:
            tv, d2 = metrics[(family, name, "torchvision")], metrics[(family, name, "detectron2")]
            gap, verdict = "-", "-"
            if tv and d2:
                delta = statistics.mean(tv) - statistics.mean(d2)
                bound = max(statistics.pstdev(tv), statistics.pstdev(d2), GAP_FLOOR)
                gap, verdict = f"{delta:+7.2f}", ("yes" if abs(delta) <= bound else f"NO (> {bound:.2f})")
            print(f"{family:16s} {name:15s} {fmt(tv):>16s} {fmt(d2):>16s} {gap:>7s}  {verdict}")
    print(f"\n{'family':16s} {'s/iter torchvision':>19s} {'s/iter detectron2':>18s} {'ratio tv/d2':>12s}")
    for family in args.families:
        tv = statistics.median(speed[(family, "torchvision")]) if speed[(family, "torchvision")] else math.nan
        d2 = statistics.median(speed[(family, "detectron2")]) if speed[(family, "detectron2")] else math.nan
        print(f"{family:16s} {tv:19.3f} {d2:18.3f} {tv / d2 if d2 == d2 and d2 else math.nan:12.2f}")
    if in_lockstep:
        print(f"\nIn lockstep (the same seed's logged total losses within {LOCKSTEP_TOLERANCE:.0%}) up to iteration:")
        for family, steps in in_lockstep.items():
            print(f"{family:16s} median {statistics.median(steps):6.0f}   per seed {' '.join(map(str, steps))}")


if __name__ == "__main__":
    main()
