"""`run_transfer`: execute a plan. Refuse its problems, honour the output folder's state, convert
the checkpoint (cached), write the semi-supervised subsets, then run the engine here or submit
the job to Slurm."""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detco_bench.engines import get_engine
from detco_bench.errors import UserError
from detco_bench.paths import check_output_folder
from detco_bench.tasks import write_subset_json
from detco_bench.transfer.describe import batch_line
from detco_bench.transfer.outcome import fail_run, start_run
from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer.slurm import slurm_executor, submit_plan
from detco_bench.transfer.state import folder_state, read_state, write_state
from detco_bench.transfer.weights import ensure_converted
from pretrain.lock import folder_lock


@dataclass
class TransferOutcome:
    status: str  # "finished" (already done), "success", "submitted"
    record: Path | None = None
    job_id: str | None = None
    plan: TransferPlan | None = None


def prepare_weights(plan: TransferPlan) -> Path:
    """Convert + verify the checkpoint for the plan's engine unless the cache already has it."""
    assert plan.checkpoint is not None and plan.weights is not None
    ck = plan.checkpoint
    return ensure_converted(ck.path, ck.format, ck.sha256, plan.engine, plan.weights)


def prepare_datasets(plan: TransferPlan) -> None:
    """Write the semi-supervised subset json files the plan refers to (deterministic, cached)."""
    for spec in plan.datasets.values():
        if spec.subset and spec.json_file and not Path(spec.json_file).is_file():
            write_subset_json(spec.subset["source"], spec.json_file, spec.subset["fraction"], spec.subset["seed"])


def _check_runnable(plan: TransferPlan) -> TransferOutcome | None:
    """Refuse a plan that cannot run; a finished job is reported, not rerun (unless --force)."""
    if plan.problems:
        raise UserError("; ".join(plan.problems))
    if plan.checkpoint is None:
        raise UserError("--checkpoint is required to run a transfer job")
    if plan.state["status"] == "finished" and not plan.force:
        return TransferOutcome(
            "finished", record=Path(plan.state["record"]) if plan.state.get("record") else None, plan=plan
        )
    reason = get_engine(plan.engine).available()
    if reason is not None:
        raise UserError(f"engine {plan.engine}: {reason}")
    if plan.launcher == "slurm":
        # No srun / submitit: refused before anything is written. Checked in a scratch folder, since
        # submitit's executors may create their log folder (the job's own folder must stay as planned).
        with tempfile.TemporaryDirectory() as scratch:
            slurm_executor(Path(scratch))
    # Where the run will write besides its folder: the record, and the converted weights unless cached.
    check_output_folder(plan.results_dir, "--results")
    if plan.weights is not None and not Path(plan.weights).is_file():
        check_output_folder(Path(plan.weights).parent, "--cache-dir")
    return None


def prepare_run(plan: TransferPlan, log: Any = print) -> TransferOutcome | None:
    """Everything before the engine, by the folder's writer (its lock held): re-check the folder,
    write the subsets, convert the weights, write plan / config / state and the 'running' record.
    Returns an outcome when there is nothing to run (finished meanwhile)."""
    early = _check_runnable(plan)
    if early is not None:
        return early
    if plan.machine_rank == 0:
        # Another process may have finished or started this folder between the plan and the lock.
        now = folder_state(plan.output_dir, plan.state["identity"])
        if now["status"] == "finished" and not plan.force:
            return TransferOutcome("finished", record=Path(now["record"]) if now.get("record") else None, plan=plan)
        if now["status"] != plan.state["status"] and not plan.force:
            raise UserError(f"{plan.out_dir} changed since this run was planned ({plan.state['status']} -> "
                            f"{now['status']}); run the command again")
        prepare_datasets(plan)
    prepare_weights(plan)
    if plan.machine_rank == 0:
        start_run(plan)
    log(f"batch/lr: {batch_line(plan)}")
    return None


def run_transfer(plan: TransferPlan, log: Any = print) -> TransferOutcome:
    """Execute a plan: refuse problems, honour the output folder's state, convert the checkpoint,
    then run the engine here (local launcher) or submit it to Slurm. Returns what happened."""
    early = _check_runnable(plan)
    if early is not None:
        return early
    # One writer per folder: machine 0 holds the lock from the first write to the end of the run.
    lock = folder_lock(plan.output_dir) if plan.machine_rank == 0 else nullcontext()
    with lock:
        early = prepare_run(plan, log)
        if early is not None:
            return early
        if plan.launcher == "slurm":
            job_id = submit_plan(plan)
            state = read_state(plan.out_dir) or {}
            state.update(status="submitted", job_id=job_id)
            write_state(plan.out_dir, state)
            return TransferOutcome("submitted", record=plan.record_path, job_id=job_id, plan=plan)
        t0 = time.monotonic()
        try:
            record = get_engine(plan.engine).run(plan)
        except KeyboardInterrupt:
            raise  # the folder stays "running": the next call resumes
        except Exception as exc:
            if plan.machine_rank == 0:
                fail_run(plan, exc, time.monotonic() - t0)
            raise
    return TransferOutcome("success", record=record, plan=plan)
