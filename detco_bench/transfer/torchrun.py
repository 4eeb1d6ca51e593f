"""``torchrun ... detco-bench transfer ...``: every process runs the command; only global rank 0
plans, holds the folder's lock and writes state. It hands its plan to the other ranks through a
file in the output folder, tagged with torchrun's run id so no rank reads a plan of an earlier
launch; then every rank runs the engine in the process group torchrun describes (RANK,
WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK), as a Slurm task does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detco_bench.engines import get_engine
from detco_bench.errors import UserError
from detco_bench.transfer.options import TransferOptions
from detco_bench.transfer.outcome import fail_run
from detco_bench.transfer.plan import TransferPlan
from detco_bench.transfer.planner import TORCHRUN, plan_options
from detco_bench.transfer.run import TransferOutcome, prepare_run
from pretrain.atomic import atomic_write_json
from pretrain.lock import folder_lock

HANDOFF_FILE = "plan.torchrun.json"
#: How long the other ranks wait for rank 0's plan (it may convert the checkpoint first).
HANDOFF_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class TorchrunWorld:
    """This process's place in a torchrun launch."""

    launch: str  # TORCHELASTIC_RUN_ID, the same on every rank of one launch
    rank: int
    world: int
    local_world: int
    node: int


def torchrun_world(env: dict[str, str] | None = None) -> TorchrunWorld | None:
    """The torchrun launch this process belongs to, or None when torchrun did not start it."""
    env = dict(os.environ) if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env or int(env.get("WORLD_SIZE", "1")) < 2:
        return None
    return TorchrunWorld(env["TORCHELASTIC_RUN_ID"], int(env["RANK"]), int(env["WORLD_SIZE"]),
                         int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])), int(env.get("GROUP_RANK", "0")))


def _handoff(out: Path, world: TorchrunWorld, payload: dict[str, Any]) -> None:
    atomic_write_json(out / HANDOFF_FILE, {"launch": world.launch, **payload})


def _await_plan(out: Path, world: TorchrunWorld, timeout_s: float) -> TransferPlan:
    deadline = time.monotonic() + timeout_s
    path = out / HANDOFF_FILE
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if data.get("launch") == world.launch:
            if data.get("error"):
                raise UserError(f"rank 0 could not start the run: {data['error']}")
            return TransferPlan.from_dict(data["plan"])
        time.sleep(0.2)
    raise UserError(f"rank {world.rank}: no plan from rank 0 in {out} after {timeout_s:.0f} s")


def run_torchrun(options: TransferOptions, world: TorchrunWorld, log: Any = print,
                 timeout_s: float = HANDOFF_TIMEOUT_S) -> TransferOutcome:
    """Run one transfer across the processes of a torchrun launch (see the module docstring)."""
    options = options.replace(launcher=TORCHRUN, gpus=world.local_world, num_machines=world.world // world.local_world,
                              machine_rank=world.node)
    out = Path(options.out or ".").expanduser().resolve()
    if world.rank != 0:
        plan = _await_plan(out, world, timeout_s)
        if plan.state.get("status") == "finished" and not plan.force:
            return TransferOutcome("finished", record=Path(plan.state["record"]), plan=plan)
        get_engine(plan.engine).run(plan)
        return TransferOutcome("success", record=plan.record_path, plan=plan)
    try:
        plan = plan_options(options)
        if plan.problems:
            raise UserError("; ".join(plan.problems))
    except UserError as exc:
        if out.parent.is_dir():
            out.mkdir(exist_ok=True)
            _handoff(out, world, {"error": str(exc)})
        raise
    with folder_lock(out):
        early = prepare_run(plan, log)
        _handoff(out, world, {"plan": plan.to_dict()})
        if early is not None:  # finished already: the other ranks read that and stop too
            return early
        t0 = time.monotonic()
        try:
            record = get_engine(plan.engine).run(plan)
        except Exception as exc:
            fail_run(plan, exc, time.monotonic() - t0)
            raise
    return TransferOutcome("success", record=record, plan=plan)
