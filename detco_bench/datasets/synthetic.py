"""Recognising a data root written by `detco-bench data synthetic` (`detco_bench.synthetic`).

Such a root holds a manifest, ``synthetic_dataset.json``, whose ``"generator"`` is
`SYNTHETIC_GENERATOR`. That value is a format tag, not a module path: it keeps the name of the
module that first wrote these manifests (``detco_bench.synthetic_layouts``), so datasets written
before and after the move to `detco_bench.synthetic` are recognised alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SYNTHETIC_MANIFEST = "synthetic_dataset.json"
SYNTHETIC_GENERATOR = "detco_bench.synthetic_layouts"


def synthetic_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a `detco-bench data synthetic` root, or None for any other folder."""
    path = Path(root) / SYNTHETIC_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("generator") == SYNTHETIC_GENERATOR:
        return data
    return None
