"""Converted weights of a transfer: converted and verified once per checkpoint and engine, then
cached by the checkpoint's sha256 (``<cache>/converted/<sha256>.<target>.pkl|.pth``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from detco_bench.checkpoints import convert_checkpoint, failure_summary, report_path_for
from detco_bench.engines import WEIGHTS_TARGET
from detco_bench.errors import UserError

CACHE_ENV = "DETCO_BENCH_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "detco-bench"


def weights_cache_path(sha256: str, engine: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted weights of a checkpoint live: ``<cache>/converted/<sha256>.<target>``."""
    target = WEIGHTS_TARGET[engine]
    suffix = ".pkl" if target == "detectron2" else ".pth"
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / "converted" / f"{sha256}.{target}{suffix}"


def weights_cached(path: str | os.PathLike, sha256: str) -> bool:
    """True when `path` exists with a passing verification report for the checkpoint `sha256`."""
    path = Path(path)
    report = report_path_for(path)
    if not (path.is_file() and report.is_file()):
        return False
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(data.get("passed")) and data.get("source", {}).get("sha256") == sha256


def ensure_converted(checkpoint: str | os.PathLike, checkpoint_format: str, sha256: str, engine: str,
                     out: str | os.PathLike) -> Path:
    """Convert + verify `checkpoint` (whose sha256 is `sha256`) for `engine` into `out` unless a
    verified conversion is there already; returns `out`. Raises `UserError` when verification fails."""
    out = Path(out)
    if weights_cached(out, sha256):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = convert_checkpoint(checkpoint, WEIGHTS_TARGET[engine], out, fmt=checkpoint_format, force=True)
    if not result.passed:
        lines = failure_summary(result.report["verification"])
        raise UserError(
            f"{checkpoint}: the converted weights failed verification "
            f"({'; '.join(lines[:3])}); report: {result.report_path}"
        )
    return out
