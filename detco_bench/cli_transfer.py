"""`detco-bench transfer` (fine-tune a checkpoint on a task of the paper) and
`detco-bench data prepare cityscapes`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


#: How --opts reads, in `transfer` and `run` alike (they take the tokens after it, not a value).
OPTS_HELP = ("Config overrides: --opts KEY VALUE ... last on the line (or one quoted string), e.g. "
             "--opts SOLVER.MAX_ITER 100 SOLVER.IMS_PER_BATCH 4; any key of the effective config "
             "(--print-config).")


def _run_transfer_command(ctx: typer.Context, list_tasks: bool, print_config: bool, protocol: bool,
                          dry_run: bool, **values: Any) -> None:
    """Fine-tune a checkpoint on a benchmark task of the paper (MoCo/DetCo protocol) and write a
    result record. Overrides: --opts KEY VALUE ... (last, e.g. --opts SOLVER.MAX_ITER 100)."""
    from detco_bench.tasks import get_task
    from detco_bench.transfer.describe import describe_plan
    from detco_bench.transfer.options import TransferOptions, opts_from_argv
    from detco_bench.transfer.planner import plan_options
    from detco_bench.transfer.protocol import comment_block
    from detco_bench.transfer.run import run_transfer
    from detco_bench.transfer.torchrun import run_torchrun, torchrun_world
    from detco_bench.transfer_config import effective_config, to_yaml

    console = Console(width=160) if list_tasks else Console()
    options = TransferOptions.from_cli(values, opts_from_argv(list(ctx.args)))
    if list_tasks:
        _list_tasks(console)
        return
    if options.task is None:
        raise UserError("--task is required (see --list)")
    task = get_task(options.task)
    if protocol:
        typer.echo(f"# the published protocol of {task.name}: 8 GPUs, synchronized BN, the task's own data\n"
                   + to_yaml(effective_config(task, [])), nl=False)
        return
    if options.out is None:
        if not print_config:
            raise UserError("--out is required")
        options = options.replace(out=Path("transfer-output"))
    if options.checkpoint is None and not (print_config or dry_run):
        raise UserError("--checkpoint is required")
    world = torchrun_world()
    if world is not None and not (print_config or dry_run):
        outcome = run_torchrun(options, world, log=lambda m: console.print(m, markup=False, highlight=False))
        if world.rank == 0:
            _say(console, outcome.plan, outcome)
        return
    plan = plan_options(options)
    if print_config:
        typer.echo(comment_block(plan.protocol) + to_yaml(plan.config), nl=False)
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
    _say(console, plan, outcome)


def _say(console: Console, plan: Any, outcome: Any) -> None:
    """How the command ended, in one line."""
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


def _transfer_command() -> Callable[..., None]:
    """The `transfer` command: the actions below plus one option per field of `TransferOptions`."""
    from detco_bench.transfer.options import cli_parameters

    keyword = inspect.Parameter.KEYWORD_ONLY
    actions = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("list_tasks", keyword, annotation=bool,
                          default=typer.Option(False, "--list", help="List the tasks and exit.")),
        inspect.Parameter("print_config", keyword, annotation=bool,
                          default=typer.Option(False, "--print-config",
                                               help="Print the effective config as YAML and exit.")),
        inspect.Parameter("protocol", keyword, annotation=bool,
                          default=typer.Option(False, "--protocol", help="Print the task's published 8-GPU config "
                                               "(no adaptation to this machine) and exit.")),
        inspect.Parameter("dry_run", keyword, annotation=bool,
                          default=typer.Option(False, "--dry-run", help="Print the plan (config, command, output "
                                               "folder, dataset check) without running.")),
    ]

    @cli_errors
    def transfer(ctx: typer.Context, **kwargs: Any) -> None:
        _run_transfer_command(ctx, **kwargs)

    transfer.__doc__ = _run_transfer_command.__doc__
    transfer.__signature__ = inspect.Signature([*actions, *cli_parameters()])  # type: ignore[attr-defined]
    transfer.__annotations__ = {}
    return transfer


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add `transfer` to the app and `prepare cityscapes` to the `data` group."""
    app.command("transfer", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                epilog=OPTS_HELP)(_transfer_command())

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

        from detco_bench.datasets import prepare_cityscapes

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
