"""`detco-bench pretrain`: DetCo / MoCo v2 pretraining (the `pretrain` package)."""

from __future__ import annotations

from pathlib import Path

import typer

from detco_bench.errors import UserError, cli_errors


def _stage_weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise UserError(f"--stage-weights must be 4 comma-separated numbers, got {text!r}") from None
    return weights


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    @app.command()
    @cli_errors
    def pretrain(
        out: Path = typer.Option(..., "--out", help="Run folder (checkpoint.pth, metrics.jsonl, tb/)."),
        preset: str = typer.Option("smoke", help="smoke | detco_r50_200ep | detco_aa_r50_200ep | mocov2_r50_200ep"),
        data: str = typer.Option(None, help="A folder of images (searched recursively) or 'synthetic'."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
        epochs: int = typer.Option(None, help="Override the preset's epochs."),
        batch_size: int = typer.Option(None, help="Global batch size over all processes."),
        arch: str = typer.Option(None, help="resnet50 | resnet18"),
        base_lr: float = typer.Option(None, help="lr at batch 256 (scaled linearly with the batch)."),
        queue_size: int = typer.Option(None, help="Keys per queue (a multiple of the global batch)."),
        multi_level: bool = typer.Option(None, "--multi-level/--no-multi-level",
                                         help="Contrast res2..res5 (DetCo) or res5 only."),
        local_contrast: bool = typer.Option(None, "--local/--no-local",
                                            help="Local patch-set contrast (L_l<->l, L_g<->l)."),
        stage_weights: str = typer.Option(None, help="Loss weights for res2..res5, e.g. 0.1,0.4,0.7,1.0"),
        randaugment: bool = typer.Option(None, "--randaugment/--no-randaugment"),
        autoaugment: bool = typer.Option(None, "--autoaugment/--no-autoaugment", help="The DetCo+AA variant."),
        image_size: int = typer.Option(None, help="Global view size."),
        amp: bool = typer.Option(None, "--amp/--no-amp", help="Mixed precision (bf16 where supported)."),
        channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last"),
        bn_splits: int = typer.Option(
            None, "--bn-splits", help="BN groups per process (split-BN: one process normalises like N). "
            "Default: 8 on one process (fewer if the batch is too small, logged), 1 under torchrun, "
            "where shuffle-BN across processes applies."),
        workers: int = typer.Option(None, help="Data-loading worker processes per rank "
                                    "(default: the preset's, at most the CPUs per process minus one)."),
        seed: int = typer.Option(None),
        save_every_steps: int = typer.Option(None, help="Also checkpoint every N steps (0: epoch ends only)."),
        max_steps: int = typer.Option(None, help="Stop after N steps in total (checkpointed; resumable)."),
        synthetic_images: int = typer.Option(None, help="Number of synthetic images (with --data synthetic)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Disable the progress bar."),
    ) -> None:
        """Pretrain DetCo or MoCo v2 and write a checkpoint (torchrun-aware: launch with
        `torchrun --nproc_per_node N --no-python detco-bench pretrain ...` for several GPUs).

        Ends with a summary: epochs, final loss, img/s, wall-clock, checkpoint and output folder.
        Exit code 2: invalid options or data, or another process writes --out. Exit code 1: the run
        stopped because a loss became inf or NaN; the last checkpoint is kept and --resume continues
        from it."""
        from pretrain.config import preset as make_preset
        from pretrain.distributed import rank
        from pretrain.train import train_run

        cfg = make_preset(
            preset, data=data, epochs=epochs, batch_size=batch_size, arch=arch, base_lr=base_lr,
            queue_size=queue_size, multi_level=multi_level, local_contrast=local_contrast,
            stage_weights=_stage_weights(stage_weights), randaugment=randaugment, autoaugment=autoaugment,
            image_size=image_size, amp=amp, channels_last=channels_last, workers=workers, seed=seed,
            save_every_steps=save_every_steps, max_steps=max_steps, synthetic_images=synthetic_images,
            bn_splits=bn_splits)
        summary = train_run(cfg, out, resume=resume, show_progress=not no_progress)
        if rank() == 0:
            typer.echo("\n".join(summary.lines()))
