"""The record schema (version 1): its constants, the errors of unusable records, and validation."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from detco_bench.records.identity import config_hash

SCHEMA = "detco-bench.result"
SCHEMA_VERSION = 1
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
    if not isinstance(ck.get("baseline", False), bool):  # optional: an in-harness baseline's tag
        raise RecordError(None, f"field 'checkpoint.baseline' must be bool, got {_type_name(ck['baseline'])}")

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

    notes = data.get("notes")
    if notes is not None:
        if not isinstance(notes, list):
            raise RecordError(None, f"field 'notes' must be a list of strings, got {_type_name(notes)}")
        for i, note in enumerate(notes):
            _expect(note, (str,), f"notes[{i}]")

    artifacts = data.get("artifacts")
    if artifacts is not None:
        _expect(artifacts, (dict,), "artifacts")
        for key, value in artifacts.items():
            _expect(value, (str,), f"artifacts.{key}", nullable=True)

