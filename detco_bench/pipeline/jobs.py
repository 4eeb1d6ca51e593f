"""One job of a pipeline: its command line (what a local process or a Slurm job runs) and whether
it already has a successful record."""

from __future__ import annotations

import sys
from pathlib import Path

from detco_bench.errors import UserError
from detco_bench.pipeline.baselines import Subject
from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.suites import Job
from detco_bench.records import RecordError, read_record
from detco_bench.transfer.options import SlurmSpec, TransferOptions
from detco_bench.transfer.slurm import submit
from detco_bench.transfer.state import read_state


def cli() -> list[str]:
    """How a job calls the CLI: this interpreter, so a job runs in the environment of the pipeline."""
    return [sys.executable, "-m", "detco_bench.cli"]


def weights_cache_dir(root: Path) -> Path:
    """The converted-weights cache shared by the pipeline's transfer jobs."""
    return root / "weights" / "cache"


def job_command(job: Job, cfg: PipelineConfig, root: Path, subject: Subject | None = None) -> list[str]:
    """The `detco-bench` command line that runs `job` on `subject` (default: the pipeline's own
    checkpoint); also what a Slurm job executes."""
    out = root / "jobs" / job.name
    checkpoint = subject.checkpoint if subject else cfg.checkpoint
    method = subject.method if subject else cfg.method
    if job.kind == "linear":
        if not cfg.linear_data:
            raise UserError("linear probe jobs need --linear-data (an ImageFolder root)")
        # The original checkpoint (not its conversion), so every record of the suite carries its sha256.
        cmd = [*cli(), "linear", "--checkpoint", checkpoint, "--data", cfg.linear_data, "--out", str(out),
               "--mode", job.task, "--seed", str(job.seed), "--resume", "--no-progress", *job.opts,
               *cfg.linear_flags]
        if method:
            cmd += ["--method", method]
        return cmd
    options = TransferOptions(
        task=job.task, checkpoint=Path(checkpoint), out=out, engine=cfg.engine, seed=job.seed,
        results_dir=root / "records", cache_dir=weights_cache_dir(root),
        data_root_dir=Path(cfg.data_root) if cfg.data_root else None, device=cfg.device, method=method,
        opts=[*job.opts, *cfg.extra_opts])
    return [*cli(), "transfer", *options.to_argv()]


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
    """Submit one job's command line to Slurm through submitit; returns the job id."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit (pip install submitit)") from None

    spec = SlurmSpec(partition=cfg.slurm.get("partition"), time_min=int(cfg.slurm.get("time", 4320)),
                     cpus_per_task=int(cfg.slurm.get("cpus_per_task", 10)))
    command = submitit.helpers.CommandFunction(job_command(job, cfg, root, subject))
    return submit(command, root / "slurm" / job.name, name=f"detco-{job.name}", spec=spec,
                  gpus_per_node=int(cfg.slurm.get("gpus_per_node", 1)))
