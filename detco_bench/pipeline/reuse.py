"""Whether a job's successful record answers what the pipeline asks now.

A job is skipped only when its record was made with the requested settings, read from the record
itself (not from what ``pipeline.json`` says was asked earlier): the checkpoint (sha256), the seed,
the method label, and for a transfer job the task, every ``--opts`` pair, the engine, the device
and the datasets root; for a linear probe every setting of its `LinearConfig` (those that only
vary per run, the seed and the loader workers, aside), parsed from the job's flags by the
``linear`` command's own parser, and the dataset folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from detco_bench.datasets import data_root
from detco_bench.engines import resolve_engine
from detco_bench.linear.config import LinearConfig, preset_config
from detco_bench.linear.flags import PRESET_FLAGS, parse_linear_argv
from detco_bench.pipeline.baselines import Subject
from detco_bench.pipeline.config import PipelineConfig
from detco_bench.pipeline.jobs import linear_args
from detco_bench.pipeline.suites import Job
from detco_bench.records import ResultRecord
from detco_bench.records.settings import LINEAR_RUN_KEYS

#: The record's ``config`` section of the transfer planner (`TransferPlan.transfer_meta`).
META_KEY = "DETCO_BENCH"


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from a record's JSON (tuples are lists)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def requested_linear_config(job: Job, cfg: PipelineConfig, root: Path) -> LinearConfig:
    """The `LinearConfig` the job's command line asks for, read by the ``linear`` command's parser."""
    values = parse_linear_argv(linear_args(job, cfg, root))
    return preset_config(values["mode"], **{name: values[name] for name in PRESET_FLAGS})


def _linear_differences(record: ResultRecord, job: Job, cfg: PipelineConfig, root: Path) -> list[str]:
    wanted = dataclasses.asdict(requested_linear_config(job, cfg, root))
    found = record.config
    diffs = [k for k, v in wanted.items() if k not in LINEAR_RUN_KEYS and found.get(k) != _jsonable(v)]
    if found.get("data") != str(Path(str(cfg.linear_data))):  # as the linear command's Path option reads it
        diffs.append("linear_data")
    return diffs


def _under(path: str | None, root: Path) -> bool:
    return path is None or Path(path) == root or root in Path(path).parents


def _transfer_differences(record: ResultRecord, job: Job, cfg: PipelineConfig, root: Path) -> list[str]:
    meta = record.config.get(META_KEY)
    if not isinstance(meta, dict):
        return ["config"]  # not a record of the transfer planner
    diffs = []
    if meta.get("task") != job.task:
        diffs.append("task")
    if meta.get("opts") != [*job.opts, *cfg.extra_opts]:
        diffs.append("opts")
    if record.engine != resolve_engine(cfg.engine):
        diffs.append("engine")
    if cfg.device is not None and meta.get("device") != cfg.device:
        diffs.append("device")
    root = data_root(cfg.data_root).resolve()
    datasets = meta.get("datasets") or {}
    if not all(isinstance(d, dict) and _under(d.get("image_root"), root) for d in datasets.values()):
        diffs.append("data_root")
    return diffs


def record_differences(record: ResultRecord, job: Job, cfg: PipelineConfig, root: Path, subject: Subject,
                       checkpoint_sha256: str) -> list[str]:
    """The settings in which `record` differs from what `job` asks now (empty: it answers the job).
    `checkpoint_sha256`: the sha256 of `subject`'s checkpoint file."""
    diffs = []
    if record.checkpoint.sha256 != checkpoint_sha256:
        diffs.append("checkpoint")
    if record.seed != job.seed:
        diffs.append("seed")
    if subject.method and record.checkpoint.method != subject.method:
        diffs.append("method")
    kind = _transfer_differences if job.kind == "transfer" else _linear_differences
    return diffs + kind(record, job, cfg, root)
