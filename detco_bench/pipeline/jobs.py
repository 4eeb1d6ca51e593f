"""One job of a pipeline: its command line (what a local process or a Slurm job runs) and whether
it already has a successful record."""

from __future__ import annotations

import sys
from pathlib import Path

from detco_bench.errors import UserError
from detco_bench.linear.flags import linear_argv
from detco_bench.pipeline.baselines import Subject
from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.suites import Job
from detco_bench.records import RecordError, read_record
from detco_bench.transfer.options import SlurmSpec, TransferOptions
from detco_bench.transfer.slurm import submit_command
from detco_bench.transfer.state import read_state


def cli() -> list[str]:
    """How a job calls the CLI: this interpreter, so a job runs in the environment of the pipeline."""
    return [sys.executable, "-m", "detco_bench.cli"]


def weights_cache_dir(root: Path) -> Path:
    """The converted-weights cache shared by the pipeline's transfer jobs."""
    return root / "weights" / "cache"


def _subject(cfg: PipelineConfig, subject: Subject | None) -> Subject:
    """The checkpoint a job runs on: `subject`, else the pipeline's own."""
    return subject or Subject("", cfg.checkpoint, cfg.method)


def transfer_options(job: Job, cfg: PipelineConfig, root: Path, subject: Subject | None = None) -> TransferOptions:
    """The options of a transfer job on `subject` (default: the pipeline's own checkpoint): what its
    command line asks for, and what the pipeline plans to validate it before any job starts.
    A baseline's records are tagged so (``--baseline``)."""
    subject = _subject(cfg, subject)
    return TransferOptions(
        task=job.task, checkpoint=Path(subject.checkpoint), out=root / "jobs" / job.name, engine=cfg.engine,
        seed=job.seed, results_dir=root / "records", cache_dir=weights_cache_dir(root),
        data_root_dir=Path(cfg.data_root) if cfg.data_root else None, device=cfg.device, method=subject.method,
        baseline=bool(subject.name), opts=[*job.opts, *cfg.extra_opts])


def linear_args(job: Job, cfg: PipelineConfig, root: Path, subject: Subject | None = None) -> list[str]:
    """The ``detco-bench linear`` arguments of a linear job on `subject` (default: the pipeline's
    own checkpoint), resumable and without progress bars; also what the pipeline parses to
    validate the job's flags before any job starts."""
    if not cfg.linear_data:
        raise UserError("linear probe jobs need --linear-data (an ImageFolder root)")
    subject = _subject(cfg, subject)
    # The original checkpoint (not its conversion), so every record of the suite carries its sha256.
    return linear_argv(subject.checkpoint, cfg.linear_data, root / "jobs" / job.name, job.task, seed=job.seed,
                       extra=(*job.opts, *cfg.linear_flags), method=subject.method, baseline=bool(subject.name),
                       resume=True, progress=False)


def job_command(job: Job, cfg: PipelineConfig, root: Path, subject: Subject | None = None) -> list[str]:
    """The `detco-bench` command line that runs `job` on `subject` (default: the pipeline's own
    checkpoint); also what a Slurm job executes."""
    if job.kind == "linear":
        return [*cli(), "linear", *linear_args(job, cfg, root, subject)]
    return [*cli(), "transfer", *transfer_options(job, cfg, root, subject).to_argv()]


def successful_record(root: Path, job: Job) -> Path | None:
    """The job's successful result record, if it has one that reads back valid.

    Transfer jobs say so in their folder's state file; linear jobs write the record in their folder.
    """
    out = root / "jobs" / job.name
    if job.kind == "transfer":
        state = read_state(out) or {}
        candidates = [Path(state["record"])] if state.get("status") == "success" and state.get("record") else []
    else:
        candidates = sorted(out.glob("*.record.json"))
    for path in candidates:
        try:
            if read_record(path).status == "success":
                return path
        except (RecordError, OSError):
            continue
    return None


def submit_job(job: Job, cfg: PipelineConfig, root: Path, subject: Subject | None = None) -> str:
    """Submit one job's command line to Slurm (`transfer.slurm`, the one submitit path); returns
    the job id."""
    spec = SlurmSpec(partition=cfg.slurm.get("partition"), time_min=int(cfg.slurm.get("time", 4320)),
                     cpus_per_task=int(cfg.slurm.get("cpus_per_task", 10)))
    return submit_command(job_command(job, cfg, root, subject), root / "slurm" / job.name, name=f"detco-{job.name}",
                          spec=spec, gpus_per_node=int(cfg.slurm.get("gpus_per_node", 1)))
