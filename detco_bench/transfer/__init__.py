"""Transfer jobs: a task + a checkpoint -> a `TransferPlan` -> an engine run -> a result record.

  options.py    `TransferOptions`: every option of a run, defined once (CLI, plan, job commands)
  plan.py       `TransferPlan` and its parts: what engines read
  planner.py    `plan_transfer`: options -> plan, side-effect free
  adapt.py      the config's adaptations (architecture, device, batch/lr rule, datasets) and why
  weights.py    the converted-weights cache
  state.py      the output folder's state
  describe.py   the ``--dry-run`` text
  run.py        `run_transfer`: the lifecycle of a run
  outcome.py    the run's record and state at start, success and failure (engines call it)
  slurm.py      the one submitit path (also used by ``detco-bench run``)

Engines import only `plan` and `outcome`. The names below are importable from the package itself
(resolved on first use, so importing `detco_bench.transfer.plan` does not import the rest).
docs/transfer.md describes the whole contract.
"""

from __future__ import annotations

from detco_bench.lazy_exports import lazy_exports

_EXPORTS = {
    "TransferOptions": "options", "SlurmSpec": "options",
    "TransferPlan": "plan", "CheckpointSpec": "plan",
    "plan_transfer": "planner", "plan_options": "planner", "record_label": "planner",
    "apply_scaling": "adapt",
    "weights_cached": "weights", "weights_cache_path": "weights",
    "read_state": "state", "write_state": "state",
    "describe_plan": "describe",
    "run_transfer": "run", "prepare_weights": "run", "prepare_datasets": "run", "TransferOutcome": "run",
    "finish_run": "outcome", "fail_run": "outcome",
    "submit_plan": "slurm", "SUBMITIT_CLUSTER_ENV": "slurm",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
