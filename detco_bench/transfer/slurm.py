"""Slurm through submitit: the one submission path, used by ``transfer --launcher slurm`` (a plan)
and by ``run --launcher slurm`` (one job command per task).

$DETCO_BENCH_SUBMITIT_CLUSTER names another submitit cluster ("local", "debug") for tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detco_bench.engines import get_engine
from detco_bench.errors import UserError
from detco_bench.transfer.options import SlurmSpec
from detco_bench.transfer.outcome import fail_run
from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer.state import read_state, write_state

SUBMITIT_CLUSTER_ENV = "DETCO_BENCH_SUBMITIT_CLUSTER"
#: Seconds before the time limit at which Slurm signals the job (submitit then requeues it).
SIGNAL_DELAY_S = 120


def _submitit() -> Any:
    """The submitit module (an optional dependency: imported only to submit)."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit (pip install submitit)") from None
    return submitit


def slurm_executor(folder: Path) -> Any:
    """submitit's executor for jobs logged under `folder` (nothing is written yet); a `UserError`
    when submission cannot work here (no submitit, no srun). Also the check a run makes before
    it writes anything."""
    submitit = _submitit()
    cluster = os.environ.get(SUBMITIT_CLUSTER_ENV) or "slurm"
    try:
        return submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    except RuntimeError as exc:  # submitit checks for srun
        raise UserError(f"--launcher slurm: {exc}") from None


def submit(fn: Callable[[], Any], folder: Path, *, name: str, spec: SlurmSpec, nodes: int = 1,
           tasks_per_node: int = 1, gpus_per_node: int | None = None) -> str:
    """Submit `fn` (picklable) as one Slurm job with `nodes` x `tasks_per_node` tasks; returns the
    job id. Every failure to submit is a `UserError` (one line)."""
    executor = slurm_executor(folder)
    cluster = os.environ.get(SUBMITIT_CLUSTER_ENV) or "slurm"
    params: dict[str, Any] = {"name": spec.job_name or name, "nodes": nodes, "tasks_per_node": tasks_per_node,
                              "cpus_per_task": spec.cpus_per_task, "timeout_min": spec.time_min}
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if spec.mem_gb:
        params["mem_gb"] = spec.mem_gb
    if cluster == "slurm":
        if spec.partition:
            params["slurm_partition"] = spec.partition
        params["slurm_signal_delay_s"] = SIGNAL_DELAY_S
    executor.update_parameters(**params)
    try:
        job = executor.submit(fn)
    except Exception as exc:  # sbatch missing or refusing the job
        raise UserError(f"Slurm submission failed: {' '.join(str(exc).split())[:300]}") from None
    return str(job.job_id)


def submit_command(argv: list[str], folder: Path, *, name: str, spec: SlurmSpec,
                   gpus_per_node: int | None = None) -> str:
    """Submit one command line (a pipeline job: ``python -m detco_bench.cli ...``) as a one-task
    Slurm job; returns the job id."""
    return submit(_submitit().helpers.CommandFunction(argv), folder, name=name, spec=spec,
                  gpus_per_node=gpus_per_node)


class SlurmJob:
    """What a Slurm task of a transfer plan runs: the engine on the plan, with torch.distributed's
    environment set by submitit (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE).
    Requeued on preemption / timeout; the engine then resumes from the output folder."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan

    def __call__(self) -> str | None:
        _submitit().helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        plan = TransferPlan.from_dict(self.plan)
        rank = int(os.environ.get("RANK", "0"))
        t0 = time.monotonic()
        if rank == 0:
            state = read_state(plan.out_dir) or {}
            state.update(status="running", job_id=os.environ.get("SLURM_JOB_ID", state.get("job_id")))
            write_state(plan.out_dir, state)
        try:
            path = get_engine(plan.engine).run(plan)
        except Exception as exc:
            if rank == 0:
                fail_run(plan, exc, time.monotonic() - t0)
            raise
        return str(path) if path is not None else None

    def checkpoint(self) -> Any:
        plan = dict(self.plan)
        plan["state"] = dict(plan.get("state") or {}, status="resume")
        return _submitit().helpers.DelayedSubmission(SlurmJob(plan))


def submit_plan(plan: TransferPlan) -> str:
    """Submit a transfer plan: one task per GPU on each of its machines; returns the job id."""
    plan_dict = plan.to_dict()
    # Whatever --force meant was done at submission (start_run); a requeued task resumes.
    plan_dict["state"] = dict(plan_dict["state"], status="resume")
    plan_dict["options"]["force"] = False
    return submit(SlurmJob(plan_dict), plan.output_dir / "slurm", name=f"detco-{plan.task_label}", spec=plan.slurm,
                  nodes=plan.num_machines, tasks_per_node=int(plan.gpus),
                  gpus_per_node=int(plan.gpus) if plan.device == "cuda" else None)
