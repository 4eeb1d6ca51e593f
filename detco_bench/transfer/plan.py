"""The transfer plan: everything one run needs, resolved, serialisable to ``<out>/plan.json``."""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detco_bench.datasets import DatasetSpec
from detco_bench.records import record_filename
from detco_bench.tasks import Task, get_task
from detco_bench.transfer.options import SlurmSpec, TransferOptions

#: The files a transfer writes into its output folder.
STATE_FILE = "transfer_state.json"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.yaml"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class CheckpointSpec:
    """The checkpoint being transferred: identity (path + sha256) and what it says about itself."""

    path: str
    sha256: str
    format: str
    arch: str
    method: str
    pretrain_epochs: int | None


@dataclass
class TransferPlan:
    """Everything one transfer run needs. Engines read it; `to_dict` / `from_dict` round-trip it
    through JSON (``<out>/plan.json``) and across processes.

    options: the user's `TransferOptions`, resolved (engine, device, gpus, folders, subset seed),
    so that ``options.command()`` plans the same run again. Their fields read as attributes of the
    plan (``plan.device``, ``plan.seed``, ``plan.opts``...).
    config: the final effective Detectron2-style config (nested dict): the task's YAML chain, then
    the adaptations (data, checkpoint arch, device), the batch/lr rule, then `opts`, literally.
    datasets: every name of config DATASETS.TRAIN / DATASETS.TEST -> its `DatasetSpec`.
    scaling: the batch/lr rule applied ({"rule", "reference_world_size", "world_size", "changes"}).
    adaptations: [{"key", "from", "to", "why"}] for every value changed from the task's config
    before `opts` (and the schedule keys scaled with an ``--opts`` SOLVER.MAX_ITER).
    protocol: how the run differs from the published protocol (`transfer.protocol`):
    {"protocol": "exact"|"adapted", "differences", "world_size", "ims_per_gpu", "total_batch",
    "ims_per_bn_group", "base_lr", "max_iter", "scaling_rule"}.
    state: the output folder's state ("new", "resume", "finished", "conflict") and details.
    problems: what stops the run (missing data, bad device settings); `run_transfer` refuses
    a plan with problems, ``--dry-run`` lists them.
    """

    options: TransferOptions
    task_label: str
    family: str
    evaluator: str
    metrics: list[str]
    checkpoint: CheckpointSpec | None
    weights: str | None
    config: dict[str, Any]
    datasets: dict[str, DatasetSpec]
    scaling: dict[str, Any]
    adaptations: list[dict[str, Any]]
    protocol: dict[str, Any]
    state: dict[str, Any]
    problems: list[str]
    run_id: str
    created_at: str = field(default_factory=now_iso)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the options' fields read as the plan's own.
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        try:
            return getattr(self.options, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting an option on the plan sets it on its options (they are the plan's own values).
        if name in _OPTION_NAMES and name not in _PLAN_NAMES:
            object.__setattr__(self, "options", dataclasses.replace(self.options, **{name: value}))
        else:
            object.__setattr__(self, name, value)

    @property
    def task(self) -> str:
        assert self.options.task is not None
        return self.options.task

    @property
    def out_dir(self) -> str:
        return str(self.options.out)

    @property
    def data_root(self) -> str:
        return str(self.options.data_root_dir)

    @property
    def results_dir(self) -> str:
        return str(self.options.results_dir)

    @property
    def world_size(self) -> int:
        return self.options.num_machines * int(self.options.gpus or 1)

    @property
    def task_obj(self) -> Task:
        return get_task(self.task)

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir)

    @property
    def resume(self) -> bool:
        """Whether the engine should resume from the output folder (an interrupted run)."""
        return self.state.get("status") == "resume" and not self.options.force

    @property
    def record_path(self) -> Path:
        return Path(self.results_dir) / record_filename(self.run_id)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["datasets"] = {k: v.to_dict() for k, v in self.datasets.items()}
        return json.loads(json.dumps(d, default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferPlan:
        data = copy.deepcopy(data)
        ck = data.get("checkpoint")
        data["checkpoint"] = CheckpointSpec(**ck) if ck else None
        data["options"] = options_from_dict(data["options"])
        data["datasets"] = {k: DatasetSpec.from_dict(v) for k, v in data["datasets"].items()}
        return cls(**data)

    def transfer_meta(self) -> dict[str, Any]:
        """How this run's config came about (stored beside the config in the record)."""
        return {
            "task": self.task,
            "subset": self.subset,
            "subset_seed": self.subset_seed,
            "opts": list(self.opts),
            "scaling": self.scaling,
            "adaptations": self.adaptations,
            "protocol": self.protocol,
            "device": self.device,
            "world_size": self.world_size,
            "launcher": self.launcher,
            "datasets": {k: v.to_dict() for k, v in self.datasets.items()},
            "checkpoint_format": self.checkpoint.format if self.checkpoint else None,
            "checkpoint_arch": self.checkpoint.arch if self.checkpoint else None,
        }

    def record_config(self) -> dict[str, Any]:
        """The ``config`` of the result record: the effective config plus a DETCO_BENCH section."""
        return {**copy.deepcopy(self.config), "DETCO_BENCH": self.transfer_meta()}

    def command(self) -> str:
        """A ``detco-bench transfer`` command line that plans the same run."""
        return self.options.command()


_PATH_FIELDS = {f.name for f in dataclasses.fields(TransferOptions) if "Path" in str(f.type)}
_OPTION_NAMES = {f.name for f in dataclasses.fields(TransferOptions)}
_PLAN_NAMES = {f.name for f in dataclasses.fields(TransferPlan)}


def options_from_dict(data: dict[str, Any]) -> TransferOptions:
    """`TransferOptions` back from `asdict` + JSON (paths come back as strings)."""
    data = dict(data)
    data["slurm"] = SlurmSpec(**(data.get("slurm") or {}))
    for name in _PATH_FIELDS:
        if data.get(name) is not None:
            data[name] = Path(data[name])
    return TransferOptions(**data)
