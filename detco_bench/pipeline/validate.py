"""Everything a pipeline's jobs would refuse, refused before the first job starts, with the same
parsers the jobs use: the suite, retries, the reference of ``--check``, each transfer job's plan
(task, ``--opts``, datasets) and each linear job's flags."""

from __future__ import annotations

from pathlib import Path

import typer
import typer.main
from typer.exceptions import TyperException

from detco_bench.cli_linear import register as register_linear
from detco_bench.errors import UserError
from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.suites import Job
from detco_bench.reference import load_reference
from detco_bench.transfer.options import TransferOptions
from detco_bench.transfer.planner import plan_options


def check_reference(name: str | None) -> None:
    """The reference ``--check`` will compare with exists and reads (raises `UserError`)."""
    if name:
        load_reference(name)


def _check_transfer(job: Job, cfg: PipelineConfig, root: Path) -> None:
    options = TransferOptions(
        task=job.task, out=root / "jobs" / job.name, engine=cfg.engine, seed=job.seed, device=cfg.device,
        data_root_dir=Path(cfg.data_root) if cfg.data_root else None, results_dir=root / "records",
        opts=[*job.opts, *cfg.extra_opts])
    try:
        plan = plan_options(options)
    except UserError as exc:
        raise UserError(f"job {job.name}: {exc}") from None
    # A folder of other settings is the runner's business (refused without --force); the rest
    # (missing data, devices) would fail the job.
    problems = [p for p in plan.problems if p != plan.state.get("reason")]
    if problems:
        raise UserError(f"job {job.name}: {'; '.join(problems)}")


def _linear_command() -> typer.core.TyperCommand:
    """The ``detco-bench linear`` command itself, for its parser."""
    app = typer.Typer()
    register_linear(app, typer.Typer())
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperCommand)
    return command


def _check_linear_flags(job: Job, cfg: PipelineConfig) -> None:
    args = ["--checkpoint", cfg.checkpoint, "--data", str(cfg.linear_data), "--out", "x", "--mode", job.task,
            *job.opts, *cfg.linear_flags]
    try:
        _linear_command().make_context("linear", args)
    except TyperException as exc:  # the parser's own error (bad value, unknown flag)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise UserError(f"job {job.name}: --linear-flags: {' '.join(message.split())}") from None


def validate_jobs(cfg: PipelineConfig, jobs: list[Job], root: Path) -> None:
    """Raise `UserError` for the first job that could not start (nothing is written)."""
    if cfg.max_retries < 0:
        raise UserError(f"--max-retries must be 0 or more, got {cfg.max_retries}")
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for job in jobs:
        key = (job.kind, job.task, job.opts)
        if key in seen:  # the same settings with another seed or subject plan alike
            continue
        seen.add(key)
        if job.kind == "transfer":
            _check_transfer(job, cfg, root)
        else:
            _check_linear_flags(job, cfg)
