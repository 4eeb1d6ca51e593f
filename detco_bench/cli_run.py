"""`detco-bench run` (a checkpoint through a suite of jobs, then the report) and `detco-bench demo`
(the whole pipeline on the embedded default: synthetic data, CPU, built-in engine)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from detco_bench.cli_transfer import OPTS_HELP
from detco_bench.errors import cli_errors


def _show(state: dict, console: Console) -> int:  # type: ignore[type-arg]
    from detco_bench.pipeline import summarize

    table = Table(title="jobs")
    for col in ("job", "status", "record / Slurm job"):
        table.add_column(col, overflow="fold")
    failed = 0
    for name, status, where in summarize(state):
        failed += status == "failed"
        color = {"success": "green", "failed": "red"}.get(status, "yellow")
        table.add_row(name, f"[{color}]{status}[/{color}]", where)
    console.print(table)
    return failed


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 epilog="Every transfer job gets the overrides: " + OPTS_HELP)
    @cli_errors
    def run(
        ctx: typer.Context,
        checkpoint: Path = typer.Option(..., "--checkpoint", help="Any checkpoint `detco-bench convert` reads."),
        out: Path = typer.Option(..., "--out", help="Pipeline folder (jobs, records, report); rerun to resume."),
        suite: str = typer.Option("smoke", help="smoke | paper | TASK,TASK,... (linear probes: linear:MODE)."),
        seeds: int = typer.Option(1, help="Run every job with seeds 0..N-1 (the report shows mean ± std)."),
        engine: str = typer.Option("auto", help="auto | detectron2 | torchvision for the transfer jobs."),
        launcher: str = typer.Option("local", help="local (one after another, or one per visible GPU) | slurm"),
        device: str = typer.Option(None, help="cpu | cuda (default: cuda when available)."),
        data_root: Path = typer.Option(None, help="Detection datasets root (default $DETECTRON2_DATASETS)."),
        linear_data: Path = typer.Option(None, help="ImageFolder root for the linear probes."),
        linear_flags: str = typer.Option(None, help="Extra flags for every linear job, e.g. '--epochs 30'."),
        max_retries: int = typer.Option(1, help="Retries of a failed job before giving up on it."),
        method: str = typer.Option(None, help="Method label for the records (default: from the checkpoint)."),
        baselines: str = typer.Option(None, help="In-harness baselines run with the same suite, seeds and "
                                      "settings: random (random init of the same architecture), "
                                      "LABEL:PATH (e.g. supervised:sup.pth), or PATH; comma-separated."),
        partition: str = typer.Option(None, help="Slurm partition."),
        gpus_per_node: int = typer.Option(1, help="Slurm GPUs per job."),
        time_min: int = typer.Option(4320, "--time", help="Slurm time limit per job, minutes."),
        report: bool = typer.Option(True, "--report/--no-report", help="Finish with the report."),
        check: str = typer.Option(None, help="Also check the report against a reference (paper | smoke | FILE)."),
        force: bool = typer.Option(False, "--force", help="Reuse a pipeline folder of other settings: jobs whose "
                                   "settings changed rerun in fresh folders (the old ones are kept aside)."),
    ) -> None:
        """Evaluate one checkpoint on a suite of transfer tasks and linear probes, then report.
        Killed and rerun, it skips finished jobs and resumes interrupted ones."""
        from detco_bench.pipeline import PipelineConfig, run_pipeline
        from detco_bench.pipeline.runner import run_report
        from detco_bench.pipeline.validate import check_reference
        from detco_bench.transfer.options import opts_from_argv, split_words

        console = Console()
        check_reference(check)
        cfg = PipelineConfig(
            checkpoint=str(checkpoint), suite=suite, seeds=seeds, engine=engine, launcher=launcher, device=device,
            data_root=str(data_root) if data_root else None, linear_data=str(linear_data) if linear_data else None,
            max_retries=max_retries, method=method, extra_opts=tuple(opts_from_argv(list(ctx.args))),
            linear_flags=tuple(split_words(linear_flags or "", "--linear-flags")),
            slurm={"partition": partition, "gpus_per_node": gpus_per_node, "time": time_min}, baselines=baselines)
        state = run_pipeline(cfg, out, log=lambda m: console.print(m, soft_wrap=True, highlight=False, markup=False),
                             force=force)
        failed = _show(state, console)
        code = 0
        if report and launcher == "local":
            code, written = run_report(out, check=check)
            if written is not None:  # only a report that was written
                console.print(f"report: {written}")
        raise typer.Exit(1 if failed or code else 0)

    @app.command()
    @cli_errors
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo folder (rerun to resume)."),
        check: bool = typer.Option(False, "--check", help="Check the metrics against the smoke references."),
    ) -> None:
        """The whole pipeline on the embedded default, CPU only: synthetic data -> DetCo smoke
        pretraining -> verified conversion -> smoke transfer (built-in engine unless detectron2 is
        installed) -> linear probes -> report."""
        from detco_bench.pipeline import run_demo

        raise typer.Exit(run_demo(out, check=check))
