"""The record itself: `ResultRecord` (one run's numbers, config, provenance) and `CheckpointInfo`."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detco_bench.records.identity import canonical_config, config_hash, new_run_id, sha256_file
from detco_bench.records.provenance import utc_iso
from detco_bench.records.schema import SCHEMA, SCHEMA_VERSION, RecordError, validate_record_dict
from detco_bench.records.settings import comparison_hash, protocol_of, settings_hash


@dataclass
class CheckpointInfo:
    """The checkpoint a run evaluated. baseline: run as an in-harness baseline of a pipeline
    (``detco-bench run --baselines``), so the report takes every method's delta against it
    whatever its method label; written to the file only when true."""

    path: str | None
    sha256: str | None
    method: str
    pretrain_epochs: int | None = None
    baseline: bool = False

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
    # Remarks on the numbers (why a metric is NaN...); optional in the file, [] when absent.
    notes: list[str] = field(default_factory=list)
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
        notes: Iterable[str] = (),
    ) -> ResultRecord:
        """Build a record, filling in run_id and config_hash (and validating it)."""
        cfg = canonical_config(config)
        record = cls(
            run_id=run_id or new_run_id(), task=task, engine=engine,
            metrics={k: float(v) for k, v in metrics.items()},
            checkpoint=checkpoint if isinstance(checkpoint, CheckpointInfo) else CheckpointInfo(**checkpoint),
            seed=seed, config=cfg, config_hash=config_hash(cfg), provenance=copy.deepcopy(dict(provenance)),
            status=status, error=error, artifacts=dict(artifacts) if artifacts is not None else None,
            notes=[str(n) for n in notes],
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
                # absent unless true, so the records of evaluated checkpoints read as before
                **({"baseline": True} if self.checkpoint.baseline else {}),
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
        if self.notes:  # absent rather than [], so records without notes read as before
            d["notes"] = list(self.notes)
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
            checkpoint=CheckpointInfo(ck["path"], ck["sha256"], ck["method"], ck["pretrain_epochs"],
                                      bool(ck.get("baseline", False))),
            seed=data["seed"], config=data["config"], config_hash=data["config_hash"],
            provenance=data["provenance"], status=data["status"], error=data["error"],
            artifacts=data.get("artifacts"), notes=list(data.get("notes") or []),
            source=Path(source) if source is not None else None,
        )

    @property
    def settings_hash(self) -> str:
        """The hash of the config without seed, folders and paths (`records.settings`): equal
        for the seeds of one measurement."""
        return settings_hash(self.config)

    @property
    def comparison_hash(self) -> str:
        """The settings hash without the checkpoint's own labels (`records.settings`): equal for
        a method and a baseline whose delta compares checkpoints only."""
        return comparison_hash(self.config)

    @property
    def protocol(self) -> dict[str, Any] | None:
        """The transfer run's protocol fidelity (``exact`` / ``adapted`` and its differences), or
        None when the record does not say (older records, linear probes)."""
        return protocol_of(self.config)

    @property
    def finished_sort_key(self) -> tuple[str, str]:
        """Orders reruns: the latest finished (else started) run last; run ids break ties."""
        p = self.provenance
        stamp = p.get("finished_at") or p.get("started_at")
        try:
            when = utc_iso(stamp) if stamp else ""
        except (TypeError, ValueError):
            when = ""
        return (when, self.run_id)

    def artifact_path(self, name: str) -> Path | None:
        """An artifact path, relative ones resolved against the record's folder."""
        value = (self.artifacts or {}).get(name)
        if not value:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p

