"""How a transfer run ends: the result record (running, success, failed) and the folder's state.

Engines call `finish_run` (global rank 0, after evaluation) or let `fail_run` record an error;
both write the record atomically and update the output folder's state file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from detco_bench.records import ResultRecord, collect_provenance, complete_metrics, write_record
from detco_bench.transfer.plan import CONFIG_FILE, PLAN_FILE, TransferPlan, now_iso
from detco_bench.transfer.state import read_state, write_state
from detco_bench.transfer_config import to_yaml
from pretrain.atomic import atomic_write_json, atomic_write_text


def _device_description(plan: TransferPlan) -> str:
    if plan.device == "cpu":
        return "cpu"
    try:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
    except Exception:  # noqa: BLE001 - only a label
        name = "cuda"
    return f"cuda:{name} x{plan.world_size}"


def _checkpoint_info(plan: TransferPlan) -> dict[str, Any]:
    ck = plan.checkpoint
    assert ck is not None
    return {"path": ck.path, "sha256": ck.sha256, "method": ck.method, "pretrain_epochs": ck.pretrain_epochs,
            "baseline": plan.options.baseline}


def write_run_record(
    plan: TransferPlan,
    *,
    status: str,
    metrics: dict[str, float],
    error: str | None,
    wall_clock_s: float,
    started_at: str,
    finished: bool,
    notes: list[str] | None = None,
) -> Path:
    """Write the run's record (status running, success or failed) into the plan's results store."""
    out = plan.output_dir
    record = ResultRecord.create(
        task=plan.task_label,
        engine=plan.engine,
        metrics=metrics,
        checkpoint=_checkpoint_info(plan),
        seed=plan.seed,
        config=plan.record_config(),
        provenance=collect_provenance(
            _device_description(plan), wall_clock_s, started_at, now_iso() if finished else None
        ),
        status=status,
        error=error,
        run_id=plan.run_id,
        notes=notes or [],
        artifacts={
            "output_dir": str(out),
            "plan": str(out / PLAN_FILE),
            "config": str(out / CONFIG_FILE),
            # Detectron2's JSONWriter writes metrics.json; the torchvision engine metrics.jsonl.
            "metrics_log": str(out / ("metrics.json" if plan.engine == "detectron2" else "metrics.jsonl")),
        },
    )
    return write_record(plan.results_dir, record)


def _previous_wall(plan: TransferPlan) -> float:
    state = read_state(plan.out_dir) or {}
    return float(state.get("wall_clock_s_before", 0.0)) if state.get("run_id") == plan.run_id else 0.0


def finish_run(plan: TransferPlan, metrics: dict[str, float], wall_clock_s: float) -> Path:
    """Called by an engine (global rank 0) after evaluation: write the success record and mark the
    output folder finished. `wall_clock_s`: this process's training + evaluation time; time spent
    by earlier, interrupted attempts of the same run is added. Returns the record path."""
    state = read_state(plan.out_dir) or {}
    total = _previous_wall(plan) + float(wall_clock_s)
    started = state.get("started_at") or now_iso()
    # Every metric of the task is in the record: NaN, with a note, where the evaluator gave nothing.
    metrics, notes = complete_metrics(metrics, plan.metrics)
    path = write_run_record(
        plan,
        status="success",
        metrics=metrics,
        notes=notes,
        error=None,
        wall_clock_s=total,
        started_at=started,
        finished=True,
    )
    state.update(
        status="success",
        record=str(path),
        finished_at=now_iso(),
        wall_clock_s=total,
        metrics=metrics,
        run_id=plan.run_id,
    )
    write_state(plan.out_dir, state)
    return path


def fail_run(plan: TransferPlan, error: BaseException | str, wall_clock_s: float = 0.0) -> Path | None:
    """Record a failed run (status "failed" with the error); the output folder stays resumable."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    message = " ".join(str(message).split())[:2000]
    state = read_state(plan.out_dir) or {}
    total = _previous_wall(plan) + float(wall_clock_s)
    try:
        path = write_run_record(
            plan,
            status="failed",
            metrics={},
            error=message,
            wall_clock_s=total,
            started_at=state.get("started_at") or now_iso(),
            finished=True,
        )
    except Exception:  # noqa: BLE001 - never hide the original error behind a record problem
        path = None
    state.update(
        status="failed",
        error=message,
        record=str(path) if path else None,
        wall_clock_s_before=total,
        run_id=plan.run_id,
    )
    write_state(plan.out_dir, state)
    return path


def start_run(plan: TransferPlan) -> None:
    """Write plan.json / config.yaml and the 'running' state and record (machine rank 0 only)."""
    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last_checkpoint"
    if plan.force and last.exists():
        # --force starts over: move the resume pointer aside so no engine resumes the old run.
        os.replace(last, out / f"last_checkpoint.replaced-by-{plan.run_id}")
    atomic_write_json(out / PLAN_FILE, plan.to_dict())
    atomic_write_text(out / CONFIG_FILE, to_yaml(plan.config))
    previous = read_state(out) or {}
    same_run = previous.get("run_id") == plan.run_id
    state = {
        "status": "running",
        "run_id": plan.run_id,
        "identity": plan.state["identity"],
        "task": plan.task_label,
        "engine": plan.engine,
        "record": str(plan.record_path),
        "started_at": previous.get("started_at") if same_run and previous.get("started_at") else now_iso(),
        "wall_clock_s_before": float(previous.get("wall_clock_s_before", 0.0)) if same_run else 0.0,
        "attempts": int(previous.get("attempts", 0)) + 1 if same_run else 1,
    }
    write_state(out, state)
    write_run_record(
        plan,
        status="running",
        metrics={},
        error=None,
        wall_clock_s=state["wall_clock_s_before"],
        started_at=state["started_at"],
        finished=False,
    )

