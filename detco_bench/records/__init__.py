"""Result records: the one file format every number-producing command writes and the report reads.

A record is a JSON object (schema ``detco-bench.result``, version 1) written atomically to
``<results store>/<run_id>.record.json``. The file suffix ``.record.json`` is what
:func:`scan_records` looks for; temp files of interrupted atomic writes never match it.

Schema (version 1)::

    {
      "schema": "detco-bench.result", "schema_version": 1,
      "run_id": str,                      # unique, filename-safe ([A-Za-z0-9._-]+)
      "task": str,                        # coco_fpn_1x, voc_c4_24k, linear_protocol, coco_fpn_12k@1%, ...
      "engine": str,                      # detectron2 | torchvision | builtin-linear | ...
      "metrics": {name: float},           # COCO-style names: bbox/AP, segm/AP50, sem_seg/mIoU, top1, ...
      "checkpoint": {"path": str|null, "sha256": str|null (64 hex), "method": str,
                     "pretrain_epochs": int|null,    # path/sha256 null only for checkpoint-less runs
                     "baseline": true},              # optional: an in-harness baseline (run --baselines)
      "seed": int,
      "config": {...},                    # the effective config (JSON)
      "config_hash": str,                 # == config_hash(config), checked on read
      "provenance": {"versions": {"torch", "torchvision", "detectron2", "detco_bench": str|null},
                     "git_commit": str|null, "device": str, "hostname": str, "wall_clock_s": float,
                     "started_at": ISO-8601 str, "finished_at": ISO-8601 str|null},
      "status": "success" | "failed" | "running",
      "error": str|null,
      "artifacts": {name: str|null},      # optional: {"metrics_log": ..., "output_dir": ...};
                                          # relative paths are relative to the record's folder
      "notes": [str]                      # optional: remarks on the numbers ("bbox/AP: the
    }                                     # evaluator returned NaN (no predictions?)")

A success record carries every metric key of its task; where the evaluator has no number the
value is NaN (JSON ``NaN``) and a note says so (`complete_metrics`).

Unknown extra keys are ignored on read (additions that old readers may skip do not need a new
version); anything that changes the meaning of an existing field bumps ``schema_version``.

Modules: `schema` (constants, `RecordError`, validation), `identity` (run ids, config and file
hashes), `provenance` (the provenance block), `record` (`ResultRecord`, `CheckpointInfo`) and
`store` (the results store: write, read, scan), `settings` (the settings hash that groups the
seeds of one measurement, the comparison hash that pairs a method with a baseline, the protocol
fidelity of a transfer run) and `metrics` (complete metric
sets with NaN notes). Every public name is re-exported here, so
``from detco_bench.records import X`` is the one import callers need.
"""

from detco_bench.records.identity import canonical_config, config_hash, new_run_id, sha256_file
from detco_bench.records.metrics import complete_metrics
from detco_bench.records.provenance import collect_provenance
from detco_bench.records.record import CheckpointInfo, ResultRecord
from detco_bench.records.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    VERSION_KEYS,
    RecordError,
    RecordExistsError,
    validate_record_dict,
)
from detco_bench.records.settings import (
    comparison_config,
    comparison_differences,
    comparison_hash,
    protocol_of,
    settings_config,
    settings_hash,
)
from detco_bench.records.store import (
    DEFAULT_RESULTS_DIR,
    RECORD_SUFFIX,
    RESULTS_ENV,
    default_results_dir,
    iter_record_files,
    read_record,
    record_filename,
    scan_records,
    write_record,
)

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "RECORD_SUFFIX",
    "RESULTS_ENV",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATUSES",
    "VERSION_KEYS",
    "CheckpointInfo",
    "RecordError",
    "RecordExistsError",
    "ResultRecord",
    "canonical_config",
    "collect_provenance",
    "comparison_config",
    "comparison_differences",
    "comparison_hash",
    "complete_metrics",
    "config_hash",
    "default_results_dir",
    "iter_record_files",
    "new_run_id",
    "protocol_of",
    "read_record",
    "record_filename",
    "scan_records",
    "settings_config",
    "settings_hash",
    "sha256_file",
    "validate_record_dict",
    "write_record",
]
