"""`detco-bench demo`: the README's main job on the embedded default (synthetic data, CPU, the
built-in engine unless detectron2 is installed), with the random-init baseline beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from detco_bench.paths import make_output_folder
from detco_bench.pipeline.baselines import RANDOM
from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.runner import run_pipeline, run_report, summarize
from detco_bench.synthetic import write_synthetic_dataset
from pretrain.config import preset
from pretrain.train import train

DEMO_COCO: dict[str, Any] = {"num_train": 64, "num_val": 16, "seed": 0, "image_size": (128, 128)}
DEMO_IMAGEFOLDER: dict[str, Any] = {"num_train": 200, "num_val": 80, "seed": 0, "image_size": (64, 64)}


def prepare_demo(out: Path, log: Callable[[str], None] = print) -> tuple[Path, Path, Path]:
    """Synthetic detection + classification datasets and the DetCo smoke checkpoint (each made
    once; a rerun reuses them). Returns (checkpoint, detection root, ImageFolder root)."""
    detection, classification = out / "data" / "detection", out / "data" / "classification"
    for folder, layout, kwargs in ((detection, "coco", DEMO_COCO), (classification, "imagefolder", DEMO_IMAGEFOLDER)):
        if not (folder / "synthetic_dataset.json").is_file():
            write_synthetic_dataset(folder, layout, force=True, **kwargs)
            log(f"[data] synthetic {layout} dataset: {folder}")
    checkpoint = train(preset("smoke", data="synthetic"), out / "pretrain", resume=True)
    log(f"[pretrain] checkpoint: {checkpoint}")
    return checkpoint, detection, classification / "imagenet"


def run_demo(out: Path, check: bool = False, log: Callable[[str], None] = print) -> int:
    """The README's main job: everything on the embedded default, CPU only, resumable. The same
    suite also runs on a random-init backbone, so the report shows what the numbers mean.

    Returns the exit code: 0, or 1 when a job failed or (with `check`) a metric regressed
    against detco_bench/references/smoke.csv.
    """
    make_output_folder(out)
    checkpoint, detection, classification = prepare_demo(out, log)
    cfg = PipelineConfig(checkpoint=str(checkpoint), suite="smoke", device="cpu", data_root=str(detection),
                         linear_data=str(classification), baselines=RANDOM)
    state = run_pipeline(cfg, out / "suite", log=log)
    failed = [name for name, status, _ in summarize(state) if status != "success"]
    code, report = run_report(out / "suite", check="smoke" if check else None)
    if report is not None:  # only a report that was written
        log(f"[report] {report / 'report.md'}  {report / 'report.html'}  plots: {report}")
    if failed:
        log(f"[demo] failed jobs: {', '.join(failed)}")
    return 1 if failed or code else 0
