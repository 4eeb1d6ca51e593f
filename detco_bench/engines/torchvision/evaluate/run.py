"""The evaluation phase of a torchvision-engine job: every DATASETS.TEST entry, one metrics dict."""

from __future__ import annotations

from detco_bench.engines.torchvision.console import ProgressBar
from detco_bench.engines.torchvision.data.batching import shard, test_loader
from detco_bench.engines.torchvision.data.datasets import TestDataset
from detco_bench.engines.torchvision.distributed import barrier
from detco_bench.engines.torchvision.evaluate.dataset import evaluate_dataset
from detco_bench.engines.torchvision.setup import Job


def evaluate(job: Job) -> dict[str, float]:
    """Inference + scoring of every test set (metric names prefixed with ``<dataset>/`` when there
    are several). Every rank takes part; the metrics are complete on rank 0 only ({} elsewhere)."""
    s = job.settings
    workers = s.int("DATALOADER.NUM_WORKERS")
    metrics: dict[str, float] = {}
    for test in job.tests:
        spec, records = test.spec, test.records
        work = job.out / "inference" / spec.name
        work.mkdir(parents=True, exist_ok=True)
        loader = test_loader(TestDataset(records, str(s["INPUT.FORMAT"])), job.rank, job.world, workers)
        job.log(f"evaluating {spec.name}: {len(records)} images", echo=True)
        bar = ProgressBar(job.rank, len(shard(len(records), job.rank, job.world)), job.console, label="inference")
        bar.start()
        try:
            result = evaluate_dataset(
                job.model,
                loader,
                spec,
                test.meta,
                device=job.device,
                work_dir=work,
                mask_on=job.mask_on,
                keypoint_on=job.keypoint_on,
                amp_dtype=job.amp_dtype,
                log=job.log,
                progress=bar.advance,
            )
        finally:
            bar.stop()
        prefix = f"{spec.name}/" if len(job.tests) > 1 else ""
        metrics.update({prefix + k: v for k, v in result.items()})
    barrier()
    return metrics
