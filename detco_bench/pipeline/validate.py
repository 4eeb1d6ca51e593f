"""Everything a pipeline's jobs would refuse, refused before the first job starts, with the same
parsers the jobs use: the suite, retries, the reference of ``--check``, each transfer job's plan
(task, ``--opts``, datasets, the checkpoint) and each linear job's flags."""

from __future__ import annotations

from pathlib import Path

from detco_bench.errors import UserError
from detco_bench.linear.flags import parse_linear_argv
from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.jobs import linear_args, transfer_options
from detco_bench.pipeline.suites import Job
from detco_bench.reference import load_reference
from detco_bench.transfer.planner import plan_options


def check_reference(name: str | None) -> None:
    """The reference ``--check`` will compare with exists and reads (raises `UserError`)."""
    if name:
        load_reference(name)


def _check_transfer(job: Job, cfg: PipelineConfig, root: Path) -> None:
    try:
        plan = plan_options(transfer_options(job, cfg, root))
    except UserError as exc:
        raise UserError(f"job {job.name}: {exc}") from None
    # A folder of other settings is the runner's business (refused without --force); the rest
    # (missing data, devices) would fail the job.
    problems = [p for p in plan.problems if p != plan.state.get("reason")]
    if problems:
        raise UserError(f"job {job.name}: {'; '.join(problems)}")


def _check_linear_flags(job: Job, cfg: PipelineConfig, root: Path) -> None:
    try:
        parse_linear_argv(linear_args(job, cfg, root))
    except UserError as exc:  # the parser's own error (bad value, unknown flag)
        raise UserError(f"job {job.name}: --linear-flags: {exc}") from None


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
            _check_linear_flags(job, cfg, root)
