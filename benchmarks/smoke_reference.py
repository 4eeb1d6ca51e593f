"""Measure the CI smoke suite over several seeds: its reference values and tolerances, and the
DetCo-smoke-pretrained backbone against a random-init one on the same schedule and seeds.

    python benchmarks/smoke_reference.py --out runs/smoke-reference [--seeds 3] [--write]

Runs `detco-bench demo`'s data + pretraining once, then the smoke suite with seeds 0..N-1 for the
DetCo checkpoint and for a random-init ResNet-18 (torchvision initialisation, seed 0). Prints mean,
std and min per metric for both, and with --write stores the DetCo rows in
detco_bench/references/smoke.csv: value = mean over seeds, spread = max(std over seeds, a floor of one
evaluation unit) so that `detco-bench report --check --reference smoke` (k = 2) tolerates what the
seeds alone vary, and fails on a real regression. Only the headline metrics are stored (the task's
registry metrics; top-1 of the linear probes): per-class and per-size APs on 16 validation images
move by many points between seeds and would only make the check fail at random.

CPU runs are deterministic, so the CI's demo reproduces seed 0 exactly; with 3 to 5 seeds no
measured seed lies more than 2 population standard deviations from their mean, so the CI check
passes on unchanged code and fails when a change moves the numbers out of the seeds' range.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torchvision

from detco_bench.pipeline import PipelineConfig, prepare_demo, run_pipeline
from detco_bench.records import scan_records
from detco_bench.task_label import TaskLabel
from detco_bench.tasks import find_benchmark
from pretrain.atomic import atomic_write_text

REFERENCE = Path(__file__).resolve().parents[1] / "detco_bench" / "references" / "smoke.csv"
# One validation unit: 16 COCO images (AP moves in ~1-point steps), 80 ImageFolder images (1.25%).
SPREAD_FLOOR = {"top1": 1.25, "knn_top1": 1.25}
DEFAULT_FLOOR = 1.0
LINEAR_HEADLINE = ("top1", "knn_top1")


def headline(task: str, metric: str) -> bool:
    """Whether `metric` is one of the headline metrics of `task` (what smoke.csv keeps)."""
    if metric in LINEAR_HEADLINE:
        return True
    benchmark = find_benchmark(TaskLabel.parse(task).base)
    return benchmark is not None and metric in benchmark.metrics


def measure(checkpoint: Path, detection: Path, classification: Path, out: Path, seeds: int,
            method: str | None = None) -> dict[tuple[str, str, str], list[float]]:
    cfg = PipelineConfig(checkpoint=str(checkpoint), suite="smoke", seeds=seeds, device="cpu",
                         data_root=str(detection), linear_data=str(classification), method=method)
    run_pipeline(cfg, out, log=print)
    records, skipped = scan_records([out / "records", out / "jobs"])
    assert not skipped, skipped
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.status == "success":
            for metric, value in r.metrics.items():
                values[(r.task, r.engine, metric)].append(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/smoke-reference"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="store the DetCo rows in detco_bench/references/smoke.csv")
    parser.add_argument("--no-random", action="store_true", help="skip the random-init comparison")
    args = parser.parse_args()
    t0 = time.time()
    checkpoint, detection, classification = prepare_demo(args.out / "demo", log=print)
    random_ck = args.out / "random_resnet18.pth"
    if not random_ck.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), random_ck)
    detco = measure(checkpoint, detection, classification, args.out / "detco", args.seeds)
    random = {} if args.no_random else measure(random_ck, detection, classification, args.out / "random", args.seeds,
                                               method="random")

    print(f"\nsmoke suite, {args.seeds} seeds, CPU, {time.time() - t0:.0f} s in all")
    print(f"{'task':40s} {'metric':12s} {'DetCo mean±std (min)':>24s} {'random mean±std (min)':>24s}")
    rows = []
    for key in sorted(detco):
        task, engine, metric = key
        d, r = detco[key], random.get(key, [])
        fmt = lambda v: f"{statistics.mean(v):6.2f}±{statistics.pstdev(v):4.2f} ({min(v):6.2f})" if v else "-"  # noqa: E731
        print(f"{task:40s} {metric:12s} {fmt(d):>24s} {fmt(r):>24s}")
        if not headline(task, metric):
            continue
        spread = max(statistics.pstdev(d), SPREAD_FLOOR.get(metric, DEFAULT_FLOOR))
        rows.append(["detco", 2, task, "smoke", engine, metric, round(statistics.mean(d), 3), round(spread, 3),
                     f"benchmarks/smoke_reference.py, {args.seeds} seeds"])
    if args.write:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["method", "pretrain_epochs", "task", "schedule", "engine", "metric", "value", "spread",
                         "source"])
        writer.writerows(rows)
        atomic_write_text(REFERENCE, buf.getvalue())
        print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()
