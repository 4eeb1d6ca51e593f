"""`detco-bench transfer` (fine-tune a checkpoint on a task of the paper) and
`detco-bench data prepare cityscapes`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from detco_bench.errors import UserError, cli_errors


def _list_tasks(console: Console) -> None:
    from detco_bench.tasks import SUBSETS, TASKS

    table = Table(title="Transfer tasks", title_justify="left")
    for col in ("task", "schedule", "batch / lr", "metrics", "reference table"):
        table.add_column(col)
    for t in TASKS.values():
        metrics = sorted({m.split("/")[0] for m in t.metrics})
        table.add_row(t.name, t.schedule, f"{t.ims_per_batch} / {t.base_lr:g}", ", ".join(metrics), t.reference)
    console.print(table)
    console.print(
        f"Semi-supervised COCO settings: --subset {'|'.join(SUBSETS)} with the COCO tasks "
        "(recorded as <task>@<subset>, e.g. coco_fpn_12k@1%). Details: docs/transfer.md."
    )


def _split_opts(extra: list[str]) -> list[str]:
    """Tokens after --opts (click hands over the unknown '--opts' marker and what follows)."""
    opts: list[str] = []
    seen = False
    for token in extra:
        if token == "--opts":
            seen = True
            continue
        if not seen:
            raise UserError(f"unexpected argument {token!r} (config overrides go after --opts KEY VALUE ...)")
        opts.append(token)
    return opts


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add `transfer` to the app and `prepare cityscapes` to the `data` group."""

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @cli_errors
    def transfer(
        ctx: typer.Context,
        task: str | None = typer.Option(None, "--task", help="Task name (see --list)."),
        checkpoint: Path | None = typer.Option(
            None,
            "--checkpoint",
            help="Any checkpoint `detco-bench convert` accepts; converted and verified "
            "on the fly (cached by its sha256).",
        ),
        out: Path | None = typer.Option(None, "--out", help="Output folder of the job (resumable)."),
        engine: str = typer.Option(
            "auto", "--engine", help="auto|detectron2|torchvision (auto: detectron2 when importable)."
        ),
        list_tasks: bool = typer.Option(False, "--list", help="List the tasks and exit."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the effective config as YAML and exit."),
        dry_run: bool = typer.Option(
            False,
            "--dry-run",
            help="Print the plan (config, command, output folder, dataset check) without running.",
        ),
        data_root: Path | None = typer.Option(
            None, "--data-root", help="Datasets root (default $DETECTRON2_DATASETS or ./datasets)."
        ),
        subset: str | None = typer.Option(None, "--subset", help="Semi-supervised COCO: 1%|2%|5%|10%."),
        subset_seed: int | None = typer.Option(None, "--subset-seed", help="Seed of the subset (default --seed)."),
        train_json: Path | None = typer.Option(None, "--train-json", help="Custom COCO-format training json."),
        val_json: Path | None = typer.Option(None, "--val-json", help="Custom COCO-format validation json."),
        images: Path | None = typer.Option(None, "--images", help="Image folder of the custom jsons."),
        val_images: Path | None = typer.Option(
            None, "--val-images", help="Image folder of --val-json (default --images)."
        ),
        device: str | None = typer.Option(None, "--device", help="cpu|cuda (default cuda when available)."),
        gpus: int | None = typer.Option(None, "--gpus", help="GPUs (processes) per machine."),
        num_machines: int = typer.Option(1, "--num-machines", help="Machines of a multi-node job."),
        machine_rank: int = typer.Option(0, "--machine-rank", help="This machine's rank."),
        dist_url: str = typer.Option("auto", "--dist-url", help="tcp://HOST:PORT of machine 0 (multi-node)."),
        launcher: str = typer.Option("local", "--launcher", help="local|slurm (Slurm through submitit)."),
        partition: str | None = typer.Option(None, "--partition", help="Slurm partition."),
        time_min: int = typer.Option(4320, "--time", help="Slurm time limit in minutes."),
        cpus_per_task: int = typer.Option(10, "--cpus-per-task", help="Slurm CPUs per task (per GPU)."),
        mem_gb: int | None = typer.Option(None, "--mem-gb", help="Slurm memory per node in GB."),
        scaling: str = typer.Option(
            "linear",
            "--scaling",
            help="Batch/lr rule when not on 8 GPUs: linear (keep images per GPU; "
            "scale lr and schedule) or none (keep the protocol's batch).",
        ),
        seed: int = typer.Option(0, "--seed", help="Training seed (recorded)."),
        method: str | None = typer.Option(
            None,
            "--method",
            help="Method label of the checkpoint for the record (detco, mocov2, ...; default: from the checkpoint).",
        ),
        pretrain_epochs: int | None = typer.Option(None, "--pretrain-epochs", help="Pretraining epochs label."),
        checkpoint_format: str = typer.Option("auto", "--format", help="Checkpoint format (see convert)."),
        results: Path | None = typer.Option(
            None,
            "--results",
            help="Results store for the record (default $DETCO_BENCH_RESULTS or results/runs).",
        ),
        cache_dir: Path | None = typer.Option(
            None,
            "--cache-dir",
            help="Converted-weights cache (default $DETCO_BENCH_CACHE or ~/.cache/detco-bench).",
        ),
        force: bool = typer.Option(False, "--force", help="Rerun a finished job / replace another job's folder."),
    ) -> None:
        """Fine-tune a checkpoint on a benchmark task of the paper (MoCo/DetCo protocol) and write a
        result record. Overrides: --opts KEY VALUE ... (last, e.g. --opts SOLVER.MAX_ITER 100)."""
        from detco_bench.transfer import SlurmSpec, describe_plan, plan_transfer, run_transfer
        from detco_bench.transfer_config import to_yaml

        console = Console(width=160) if list_tasks else Console()
        opts = _split_opts(list(ctx.args))
        if list_tasks:
            _list_tasks(console)
            return
        if task is None:
            raise UserError("--task is required (see --list)")
        from detco_bench.tasks import get_task

        get_task(task)
        if out is None:
            if not print_config:
                raise UserError("--out is required")
            out = Path("transfer-output")
        if checkpoint is None and not (print_config or dry_run):
            raise UserError("--checkpoint is required")
        plan = plan_transfer(
            task,
            checkpoint,
            out,
            engine=engine,
            opts=opts,
            device=device,
            gpus=gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            launcher=launcher,
            slurm=SlurmSpec(partition=partition, time_min=time_min, cpus_per_task=cpus_per_task, mem_gb=mem_gb),
            seed=seed,
            data_root_dir=data_root,
            subset=subset,
            subset_seed=subset_seed,
            train_json=str(train_json) if train_json else None,
            val_json=str(val_json) if val_json else None,
            images=str(images) if images else None,
            val_images=str(val_images) if val_images else None,
            method=method,
            pretrain_epochs=pretrain_epochs,
            results_dir=results,
            cache_dir=cache_dir,
            scaling=scaling,
            force=force,
            checkpoint_format=checkpoint_format,
        )
        if print_config:
            typer.echo(to_yaml(plan.config), nl=False)
            return
        if dry_run:
            for line in describe_plan(plan):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            console.rule("effective config")
            typer.echo(to_yaml(plan.config), nl=False)
            if plan.problems:
                raise UserError(f"{len(plan.problems)} problem(s): {'; '.join(plan.problems)}")
            return
        outcome = run_transfer(plan, log=lambda m: console.print(m, markup=False, highlight=False))
        if outcome.status == "finished":
            console.print(
                f"already finished: {plan.out_dir} (record {outcome.record}); --force reruns it",
                markup=False,
                highlight=False,
            )
        elif outcome.status == "submitted":
            console.print(
                f"submitted Slurm job {outcome.job_id}; logs in {Path(plan.out_dir) / 'slurm'}; the "
                f"record will be {outcome.record}",
                markup=False,
                highlight=False,
            )
            typer.echo(outcome.job_id)
        else:
            console.print(f"done: record {outcome.record}", markup=False, highlight=False)

    prepare_app = typer.Typer(help="Prepare downloaded datasets for the transfer tasks.", no_args_is_help=True)
    data_app.add_typer(prepare_app, name="prepare")

    @prepare_app.command("cityscapes")
    @cli_errors
    def prepare_cityscapes_cmd(
        root: Path = typer.Option(
            ...,
            "--root",
            help="The Cityscapes folder (with gtFine/), or a DETECTRON2_DATASETS root containing cityscapes/.",
        ),
        instance_ids: bool = typer.Option(
            False, "--instance-ids", help="Also create missing *_gtFine_instanceIds.png from the polygons."
        ),
        workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", help="Parallel processes."),
        force: bool = typer.Option(False, "--force", help="Rewrite files that already exist."),
    ) -> None:
        """Run cityscapesScripts' createTrainIdLabelImgs: *_gtFine_labelTrainIds.png for the
        semantic task (and, with --instance-ids, missing *_gtFine_instanceIds.png)."""
        from rich.progress import Progress

        from detco_bench.transfer_data import prepare_cityscapes

        with Progress(transient=True) as progress:
            bar = progress.add_task("cityscapesScripts", total=None)

            def report(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            summary = prepare_cityscapes(root, instance_ids=instance_ids, force=force, workers=workers, progress=report)
        w, s = summary["written"], summary["skipped_existing"]
        typer.echo(
            f"{summary['root']}: {summary['polygon_files']} polygon files; wrote {w['labelTrainIds']} "
            f"labelTrainIds ({s['labelTrainIds']} existed)"
            + (f", {w['instanceIds']} instanceIds ({s['instanceIds']} existed)" if instance_ids else "")
        )
