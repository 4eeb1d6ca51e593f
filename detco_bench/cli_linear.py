"""`detco-bench linear`: linear probe, cached-feature probe, kNN and per-stage probes."""

from __future__ import annotations

from pathlib import Path

import typer

from detco_bench.errors import cli_errors


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    @app.command()
    @cli_errors
    def linear(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="Any checkpoint `detco-bench convert` reads."),
        data: Path = typer.Option(..., "--data", help="ImageFolder root with train/<class>/ and val/<class>/."),
        out: Path = typer.Option(..., "--out", help="Output folder (state, feature cache, result record)."),
        mode: str = typer.Option("protocol", help="protocol | fast | knn | stages"),
        epochs: int = typer.Option(None, help="Default 100 (lr x0.1 at 60% and 80% of them)."),
        batch_size: int = typer.Option(None, help="Global batch size (default 256)."),
        lr: float = typer.Option(None, help="Default 30 (MoCo's linear protocol)."),
        image_size: int = typer.Option(None, help="Crop size (default 224; validation resizes to size*256/224)."),
        aug_copies: int = typer.Option(None, help="fast/stages: passes of the training augmentation to cache "
                                                  "(default 3; 0 trains on centre crops)."),
        fast_head: str = typer.Option(None, help="fast/stages: sgd (the protocol's head and schedule on the "
                                                 "cached views; default) | lbfgs (logistic regression, weight "
                                                 "decay chosen on held-out training images)."),
        cache_dtype: str = typer.Option(None, help="float32 | float16 for the feature cache."),
        knn_k: int = typer.Option(None, help="kNN neighbours (default 20)."),
        workers: int = typer.Option(None, help="Data-loading workers (default 8)."),
        seed: int = typer.Option(None),
        format: str = typer.Option("auto", "--format", help="Checkpoint format (auto-detected by default)."),
        method: str = typer.Option(None, help="Method label for the record (default: from the checkpoint)."),
        dataset_name: str = typer.Option(None, help="Dataset label (default: imagenet for 1000 classes, "
                                                    "else the folder name)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the job in --out."),
        no_progress: bool = typer.Option(False, "--no-progress"),
    ) -> None:
        """Evaluate a frozen backbone on an ImageFolder dataset (the MoCo linear protocol and
        faster approximations). Launch with torchrun for several GPUs (protocol mode)."""
        from detco_bench.linear import preset_config, run_linear
        from detco_bench.records import read_record
        from pretrain.distributed import rank

        cfg = preset_config(mode, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                            aug_copies=aug_copies, fast_head=fast_head, cache_dtype=cache_dtype, knn_k=knn_k,
                            workers=workers, seed=seed)
        path = run_linear(checkpoint, data, out, cfg, fmt=format, method=method, dataset_name=dataset_name,
                          resume=resume, show_progress=not no_progress)
        if rank() == 0:
            record = read_record(path)
            shown = "  ".join(f"{k} {v:.2f}" for k, v in sorted(record.metrics.items()))
            typer.echo(f"{record.task}: {shown}")
            typer.echo(f"record: {path}")
