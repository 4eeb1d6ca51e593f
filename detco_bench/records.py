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
                     "pretrain_epochs": int|null},   # path/sha256 null only for checkpoint-less runs
      "seed": int,
      "config": {...},                    # the effective config (JSON)
      "config_hash": str,                 # == config_hash(config), checked on read
      "provenance": {"versions": {"torch", "torchvision", "detectron2", "detco_bench": str|null},
                     "git_commit": str|null, "device": str, "hostname": str, "wall_clock_s": float,
                     "started_at": ISO-8601 str, "finished_at": ISO-8601 str|null},
      "status": "success" | "failed" | "running",
      "error": str|null,
      "artifacts": {name: str|null}       # optional: {"metrics_log": ..., "output_dir": ...};
    }                                     # relative paths are relative to the record's folder

Unknown extra keys are ignored on read (additions that old readers may skip do not need a new
version); anything that changes the meaning of an existing field bumps ``schema_version``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_json

SCHEMA = "detco-bench.result"
SCHEMA_VERSION = 1
RECORD_SUFFIX = ".record.json"
RESULTS_ENV = "DETCO_BENCH_RESULTS"
DEFAULT_RESULTS_DIR = Path("results") / "runs"
STATUSES = ("success", "failed", "running")
VERSION_KEYS = ("torch", "torchvision", "detectron2", "detco_bench")

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class RecordError(ValueError):
    """A record that cannot be used: corrupt JSON, missing fields, unknown schema, wrong types."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class RecordExistsError(RecordError, FileExistsError):
    """Writing would overwrite another run's record."""


def default_results_dir() -> Path:
    """The results store: ``$DETCO_BENCH_RESULTS`` or ``results/runs`` (relative to the cwd)."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else DEFAULT_RESULTS_DIR


# --------------------------------------------------------------------------- identity helpers


def new_run_id() -> str:
    """A unique, sortable, filename-safe run id: ``20250102T030405Z-1a2b3c4d5e6f``."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        return item()
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable")


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it will read back from JSON (tuples -> lists, Paths -> str, keys -> str)."""
    return json.loads(json.dumps(config, default=_json_default, allow_nan=True))


def _canonical_json(config: Mapping[str, Any]) -> str:
    return json.dumps(
        canonical_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `config` (sorted keys, compact separators)."""
    return hashlib.sha256(_canonical_json(config).encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _utc_iso(value: datetime | float | int | str | None) -> str:
    if value is None:
        value = datetime.now(timezone.utc)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, timezone.utc)
    if value.tzinfo is None:
        value = value.astimezone()  # naive datetimes are local time
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    import detco_bench

    versions: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "detectron2"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = __import__("sys").modules.get(name)
            versions[name] = getattr(module, "__version__", None) if module is not None else None
    versions["detco_bench"] = detco_bench.__version__
    return versions


def _git_commit() -> str | None:
    """HEAD of the git repository holding this package, or None (installed copy, no git)."""
    pkg_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(pkg_dir), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        return None
    toplevel, commit = lines
    # Only trust the commit if this package is really part of that repository.
    if not (Path(toplevel) / "detco_bench" / "records.py").resolve() == Path(__file__).resolve():
        return None
    return commit


def collect_provenance(
    device: str,
    wall_clock_s: float,
    started_at: datetime | float | str,
    finished_at: datetime | float | str | None = None,
) -> dict[str, Any]:
    """The record's ``provenance`` block. `started_at`: datetime, epoch seconds or ISO string;
    `finished_at` defaults to now. Versions come from installed package metadata (no imports)."""
    return {
        "versions": _package_versions(),
        "git_commit": _git_commit(),
        "device": str(device),
        "hostname": socket.gethostname(),
        "wall_clock_s": float(wall_clock_s),
        "started_at": _utc_iso(started_at),
        "finished_at": _utc_iso(finished_at),
    }


# --------------------------------------------------------------------------- the record


@dataclass
class CheckpointInfo:
    path: str | None
    sha256: str | None
    method: str
    pretrain_epochs: int | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, method: str, pretrain_epochs: int | None) -> CheckpointInfo:
        return cls(path=os.fspath(path), sha256=sha256_file(path), method=method,
                   pretrain_epochs=pretrain_epochs)

    @property
    def identity(self) -> str:
        """What makes two records 'the same checkpoint': its sha256, else method + path."""
        return self.sha256 or f"{self.method}:{self.path or ''}"


@dataclass
class ResultRecord:
    run_id: str
    task: str
    engine: str
    metrics: dict[str, float]
    checkpoint: CheckpointInfo
    seed: int
    config: dict[str, Any]
    config_hash: str
    provenance: dict[str, Any]
    status: str = "success"
    error: str | None = None
    artifacts: dict[str, str | None] | None = None
    # Where the record was read from (not serialised).
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint, Mapping):
            self.checkpoint = CheckpointInfo(**self.checkpoint)

    @classmethod
    def create(
        cls,
        *,
        task: str,
        engine: str,
        metrics: Mapping[str, float],
        checkpoint: CheckpointInfo | Mapping[str, Any],
        seed: int,
        config: Mapping[str, Any],
        provenance: Mapping[str, Any],
        status: str = "success",
        error: str | None = None,
        artifacts: Mapping[str, str | None] | None = None,
        run_id: str | None = None,
    ) -> ResultRecord:
        """Build a record, filling in run_id and config_hash (and validating it)."""
        cfg = canonical_config(config)
        record = cls(
            run_id=run_id or new_run_id(), task=task, engine=engine,
            metrics={k: float(v) for k, v in metrics.items()},
            checkpoint=checkpoint if isinstance(checkpoint, CheckpointInfo) else CheckpointInfo(**checkpoint),
            seed=seed, config=cfg, config_hash=config_hash(cfg), provenance=copy.deepcopy(dict(provenance)),
            status=status, error=error, artifacts=dict(artifacts) if artifacts is not None else None,
        )
        validate_record_dict(record.to_dict())
        return record

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (a deep copy: editing it does not change the record)."""
        d: dict[str, Any] = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "task": self.task,
            "engine": self.engine,
            "metrics": dict(self.metrics),
            "checkpoint": {
                "path": self.checkpoint.path,
                "sha256": self.checkpoint.sha256,
                "method": self.checkpoint.method,
                "pretrain_epochs": self.checkpoint.pretrain_epochs,
            },
            "seed": self.seed,
            "config": copy.deepcopy(self.config),
            "config_hash": self.config_hash,
            "provenance": copy.deepcopy(self.provenance),
            "status": self.status,
            "error": self.error,
        }
        if self.artifacts is not None:
            d["artifacts"] = dict(self.artifacts)
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike | None = None) -> ResultRecord:
        """Validate a parsed record; raises RecordError(source, reason)."""
        try:
            validate_record_dict(data)
        except RecordError as exc:
            raise RecordError(source, exc.reason) from None
        ck = data["checkpoint"]
        return cls(
            run_id=data["run_id"], task=data["task"], engine=data["engine"],
            metrics={k: float(v) for k, v in data["metrics"].items()},
            checkpoint=CheckpointInfo(ck["path"], ck["sha256"], ck["method"], ck["pretrain_epochs"]),
            seed=data["seed"], config=data["config"], config_hash=data["config_hash"],
            provenance=data["provenance"], status=data["status"], error=data["error"],
            artifacts=data.get("artifacts"), source=Path(source) if source is not None else None,
        )

    def artifact_path(self, name: str) -> Path | None:
        """An artifact path, relative ones resolved against the record's folder."""
        value = (self.artifacts or {}).get(name)
        if not value:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p


# --------------------------------------------------------------------------- validation

_MISSING = object()


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    value = d.get(key, _MISSING)
    if value is _MISSING:
        raise RecordError(None, f"missing field '{where}{key}'")
    return value


def _expect(value: Any, types: tuple[type, ...], name: str, nullable: bool = False) -> Any:
    if value is None and nullable:
        return value
    # bool is an int subclass: never accept it where a number is expected.
    if isinstance(value, bool) or not isinstance(value, types):
        expected = "number" if float in types else {str: "string", int: "int", dict: "object"}[types[0]]
        if nullable:
            expected += " or null"
        raise RecordError(None, f"field '{name}' must be {expected}, got {_type_name(value)}")
    return value


def _check_iso(value: Any, name: str, nullable: bool = False) -> None:
    _expect(value, (str,), name, nullable)
    if value is None:
        return
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(None, f"field '{name}' is not an ISO-8601 timestamp: {value!r}") from None


def validate_record_dict(data: Any) -> None:
    """Raise RecordError(None, reason) unless `data` is a valid version-1 record."""
    if not isinstance(data, dict):
        raise RecordError(None, f"not a JSON object (got {_type_name(data)})")
    schema = data.get("schema", _MISSING)
    if schema is _MISSING:
        raise RecordError(None, "missing field 'schema' (not a detco-bench result record)")
    if schema != SCHEMA:
        raise RecordError(None, f"unknown schema {schema!r} (expected {SCHEMA!r})")
    version = _get(data, "schema_version", "")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordError(None, f"field 'schema_version' must be int, got {_type_name(version)}")
    if version != SCHEMA_VERSION:
        raise RecordError(
            None, f"unsupported schema_version {version} (this detco-bench reads {SCHEMA_VERSION})"
        )

    run_id = _expect(_get(data, "run_id", ""), (str,), "run_id")
    if not _RUN_ID_RE.match(run_id):
        raise RecordError(None, f"field 'run_id' is not filename-safe: {run_id!r}")
    for key in ("task", "engine"):
        if not _expect(_get(data, key, ""), (str,), key):
            raise RecordError(None, f"field '{key}' is empty")

    metrics = _expect(_get(data, "metrics", ""), (dict,), "metrics")
    for name, value in metrics.items():
        _expect(value, (int, float), f"metrics.{name}")
        if math.isinf(value):
            raise RecordError(None, f"field 'metrics.{name}' is infinite")

    ck = _expect(_get(data, "checkpoint", ""), (dict,), "checkpoint")
    _expect(_get(ck, "path", "checkpoint."), (str,), "checkpoint.path", nullable=True)
    sha = _expect(_get(ck, "sha256", "checkpoint."), (str,), "checkpoint.sha256", nullable=True)
    if sha is not None and not _SHA256_RE.match(sha):
        raise RecordError(None, "field 'checkpoint.sha256' is not 64 lowercase hex digits")
    if not _expect(_get(ck, "method", "checkpoint."), (str,), "checkpoint.method"):
        raise RecordError(None, "field 'checkpoint.method' is empty")
    _expect(_get(ck, "pretrain_epochs", "checkpoint."), (int,), "checkpoint.pretrain_epochs", nullable=True)

    _expect(_get(data, "seed", ""), (int,), "seed")
    config = _expect(_get(data, "config", ""), (dict,), "config")
    chash = _expect(_get(data, "config_hash", ""), (str,), "config_hash")
    if chash != config_hash(config):
        raise RecordError(None, "field 'config_hash' does not match config (edited by hand?)")

    prov = _expect(_get(data, "provenance", ""), (dict,), "provenance")
    versions = _expect(_get(prov, "versions", "provenance."), (dict,), "provenance.versions")
    for key in VERSION_KEYS:
        _expect(_get(versions, key, "provenance.versions."), (str,), f"provenance.versions.{key}",
                nullable=True)
    _expect(_get(prov, "git_commit", "provenance."), (str,), "provenance.git_commit", nullable=True)
    _expect(_get(prov, "device", "provenance."), (str,), "provenance.device")
    _expect(_get(prov, "hostname", "provenance."), (str,), "provenance.hostname")
    wall = _expect(_get(prov, "wall_clock_s", "provenance."), (int, float), "provenance.wall_clock_s")
    if not wall >= 0:
        raise RecordError(None, "field 'provenance.wall_clock_s' must be >= 0")
    _check_iso(_get(prov, "started_at", "provenance."), "provenance.started_at")
    _check_iso(_get(prov, "finished_at", "provenance."), "provenance.finished_at", nullable=True)

    status = _expect(_get(data, "status", ""), (str,), "status")
    if status not in STATUSES:
        raise RecordError(None, f"field 'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    _expect(_get(data, "error", ""), (str,), "error", nullable=True)

    artifacts = data.get("artifacts")
    if artifacts is not None:
        _expect(artifacts, (dict,), "artifacts")
        for key, value in artifacts.items():
            _expect(value, (str,), f"artifacts.{key}", nullable=True)


# --------------------------------------------------------------------------- reading / writing


def record_filename(run_id: str) -> str:
    return f"{run_id}{RECORD_SUFFIX}"


def write_record(folder_or_path: str | os.PathLike, record: ResultRecord) -> Path:
    """Write `record` atomically; returns the file path.

    A folder (or any path not ending in ``.record.json``) gets ``<run_id>.record.json`` inside it;
    an explicit ``*.record.json`` path must contain the run id in its name. The same run may
    rewrite its own record (running -> success); another run's record is never overwritten
    (RecordExistsError). The record is validated before anything is written.
    """
    data = record.to_dict()
    try:
        validate_record_dict(data)
    except RecordError as exc:
        raise RecordError(None, f"refusing to write an invalid record: {exc.reason}") from None
    target = Path(folder_or_path)
    if target.name.endswith(RECORD_SUFFIX):
        if record.run_id not in target.name:
            raise ValueError(f"record file name {target.name!r} must contain the run id {record.run_id!r}")
    else:
        target = target / record_filename(record.run_id)
    if target.exists():
        try:
            existing = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if not isinstance(existing, dict) or existing.get("run_id") != record.run_id:
            raise RecordExistsError(target, "exists and belongs to another run (or is unreadable); "
                                            "not overwriting it")
    return atomic_write_json(target, data)


def read_record(path: str | os.PathLike) -> ResultRecord:
    """Read and validate one record file; raises RecordError(path, reason)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(path, f"unreadable: {exc}") from None
    if not text.strip():
        raise RecordError(path, "empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, f"corrupt JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return ResultRecord.from_dict(data, source=path)


def iter_record_files(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> Iterable[Path]:
    """Record files under `paths` (files are taken as given; folders are walked recursively for
    ``*.record.json``), in a deterministic order. Missing paths are yielded as-is."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            yield p
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(RECORD_SUFFIX) and not name.startswith("."):
                    yield Path(dirpath) / name


def scan_records(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
) -> tuple[list[ResultRecord], list[tuple[Path, str]]]:
    """Read every record under `paths`; never raises for bad records.

    Returns (records, skipped) where skipped lists (path, reason) for missing paths, corrupt,
    partial, unknown-schema/version or mistyped records, and for files that repeat a run_id
    already read (copies would otherwise be counted twice).
    """
    records: list[ResultRecord] = []
    skipped: list[tuple[Path, str]] = []
    seen: dict[str, ResultRecord] = {}
    for path in iter_record_files(paths):
        if not path.exists():
            skipped.append((path, "path does not exist"))
            continue
        try:
            record = read_record(path)
        except RecordError as exc:
            skipped.append((path, exc.reason))
            continue
        first = seen.get(record.run_id)
        if first is not None:
            same = first.to_dict() == record.to_dict()
            skipped.append((path, f"duplicate run_id {record.run_id!r} (already read from {first.source}"
                                  f"{'' if same else ', with different content'})"))
            continue
        seen[record.run_id] = record
        records.append(record)
    return records, skipped
