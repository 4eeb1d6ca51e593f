"""Identities: run ids, the canonical config and its hash, checkpoint file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any


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


def canonical_json(config: Mapping[str, Any]) -> str:
    """The JSON text `config_hash` hashes: sorted keys, compact separators. `config` must be
    canonical already (`canonical_config`): plain JSON types."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `config` (sorted keys, compact separators)."""
    return hashlib.sha256(canonical_json(canonical_config(config)).encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

