"""The record's provenance block: package versions, git commit, device, host and timing."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import detco_bench


def utc_iso(value: datetime | float | int | str | None) -> str:
    """A timestamp (datetime, epoch seconds or ISO string; None = now) as ISO-8601 UTC seconds."""
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
    versions: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "detectron2"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            versions[name] = getattr(module, "__version__", None) if module is not None else None
    versions["detco_bench"] = detco_bench.__version__
    return versions


def _git_commit() -> str | None:
    """HEAD of the git repository holding this package, or None (installed copy, no git)."""
    here = Path(__file__).resolve()
    try:
        out = subprocess.run(
            ["git", "-C", str(here.parent), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        return None
    toplevel, commit = lines
    # Only trust the commit if this package is really part of that repository (an installed copy
    # may sit inside some other checkout, e.g. a virtualenv in a project folder).
    if (Path(toplevel) / here.relative_to(here.parents[2])).resolve() != here:
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
        "started_at": utc_iso(started_at),
        "finished_at": utc_iso(finished_at),
    }

