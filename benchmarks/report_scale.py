"""How long does the report take on a big results store?

Generates N synthetic result records (default 10,000: 40 checkpoints x 25 tasks x 10 seeds) in a
temporary folder, then times scan + validate (records.scan_records), aggregation (pandas), the
paper-style tables and --check against the paper reference. Exit status 1 if the total goes over
--budget seconds (default 5, the figure issue 7 asks for).

    .venv/bin/python benchmarks/report_scale.py [--records 10000] [--budget 5]

The records are written with plain writes, not atomic ones (fsync-ing 10,000 files measures the
disk, not the report).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detco_bench import report as rep  # noqa: E402
from detco_bench.records import RECORD_SUFFIX, CheckpointInfo, ResultRecord, scan_records  # noqa: E402
from detco_bench.reference import load_reference  # noqa: E402

TASK_METRICS = {
    **{f"coco_{a}_{s}": ["bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP", "segm/AP50", "segm/AP75"]
       for a in ("c4", "fpn") for s in ("12k", "1x", "2x")},
    **{f"retinanet_{s}": ["bbox/AP", "bbox/AP50", "bbox/AP75"] for s in ("12k", "1x", "2x")},
    "keypoint_fpn_2x": ["keypoints/AP", "keypoints/AP50", "keypoints/AP75"],
    "voc_c4_24k": ["bbox/AP", "bbox/AP50", "bbox/AP75"],
    "cityscapes_inst_fpn": ["segm/AP", "segm/AP50"],
    "cityscapes_sem": ["sem_seg/mIoU"],
    "linear_protocol": ["top1", "top5", "knn_top1"],
    **{f"{t}@{p}": ["bbox/AP", "bbox/AP50", "bbox/AP75"]
       for t in ("coco_fpn_12k", "retinanet_12k") for p in ("1%", "10%")},
    "densepose_fpn": ["densepose/AP", "densepose/AP50", "densepose/AP75"],
    "voc07_svm": ["mAP"],
}
METHODS = [("supervised", 90), ("mocov2", 200), ("detco", 200), ("detco_aa", 200), ("random", None),
           ("detco", 100), ("detco", 800), ("mocov2", 800)]
PROV = {"versions": {"torch": "2.14.1", "torchvision": "0.29.1", "detectron2": "0.6", "detco_bench": "0.1.0"},
        "git_commit": "0" * 40, "device": "cpu", "hostname": "bench", "wall_clock_s": 1.0,
        "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:00:01+00:00"}


def generate(n: int, folder: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    tasks = list(TASK_METRICS)
    n_ckpts = 40
    for i in range(n):
        method, epochs = METHODS[(i // len(tasks)) % n_ckpts % len(METHODS)]
        ck = (i // len(tasks)) % n_ckpts
        task = tasks[i % len(tasks)]
        engine = "builtin-linear" if task in ("linear_protocol", "voc07_svm") else \
            ("detectron2" if ck % 4 else "torchvision")
        metrics = {m: round(rng.uniform(20, 80), 2) for m in TASK_METRICS[task]}
        r = ResultRecord.create(
            task=task, engine=engine, metrics=metrics, seed=i // (len(tasks) * n_ckpts),
            checkpoint=CheckpointInfo(f"/ck/{ck}.pth", f"{ck:064x}", method, epochs),
            config={"task": task, "lr": 0.02, "ck": ck}, provenance=PROV, run_id=f"bench-{i:06d}")
        sub = folder / task.replace("@", "_").replace("%", "pct")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{r.run_id}{RECORD_SUFFIX}").write_text(json.dumps(r.to_dict()))


def run(n: int, folder: Path) -> dict[str, float]:
    """Generate n records in `folder` and time the report stages (seconds)."""
    t = time.perf_counter()
    generate(n, folder)
    timings: dict[str, float] = {"generate_s": time.perf_counter() - t}
    t0 = time.perf_counter()
    records, skipped = scan_records([folder])
    t1 = time.perf_counter()
    runs = rep.runs_frame([r for r in records if r.status == "success"])
    summary = rep.aggregate(runs)
    groups = rep.groups_from_summary(summary)
    t2 = time.perf_counter()
    reference = load_reference("paper")
    tables = rep.build_tables(groups, reference)
    check = rep.run_check(groups, reference, 2.0)
    t3 = time.perf_counter()
    timings.update(records=len(records), skipped=len(skipped), groups=len(groups), tables=len(tables),
                   checked=len(check.table), scan_validate_s=t1 - t0, aggregate_s=t2 - t1,
                   tables_check_s=t3 - t2, total_s=t3 - t0)
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--budget", type=float, default=5.0, help="seconds allowed for scan+validate+aggregate")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="detco-report-scale-") as tmp:
        t = run(args.records, Path(tmp))
    print(f"generated {t['records']} records in {t['generate_s']:.1f} s (not timed)")
    print(f"scan + validate : {t['scan_validate_s']:.2f} s  ({t['records']} records, {t['skipped']} skipped)")
    print(f"aggregate       : {t['aggregate_s']:.2f} s  ({t['groups']} groups)")
    print(f"tables + check  : {t['tables_check_s']:.2f} s  ({t['tables']} tables, {t['checked']} checked)")
    verdict = "within" if t["total_s"] <= args.budget else "OVER"
    print(f"total           : {t['total_s']:.2f} s  ({verdict} the {args.budget:g} s budget)")
    return 0 if t["total_s"] <= args.budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
