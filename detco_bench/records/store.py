"""The results store on disk: where records live, and writing, reading and scanning record files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from detco_bench.records.record import ResultRecord
from detco_bench.records.schema import RecordError, RecordExistsError, validate_record_dict
from pretrain.atomic import atomic_write_json

RECORD_SUFFIX = ".record.json"
RESULTS_ENV = "DETCO_BENCH_RESULTS"
DEFAULT_RESULTS_DIR = Path("results") / "runs"


def default_results_dir() -> Path:
    """The results store: ``$DETCO_BENCH_RESULTS`` or ``results/runs`` (relative to the cwd)."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else DEFAULT_RESULTS_DIR


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
