"""Training logs of a record's run (for the training-curve plot): where they are and their losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

from detco_bench.records import ResultRecord

LOG_NAMES = ("metrics.jsonl", "metrics.json")  # ours, then detectron2's


def find_metrics_log(record: ResultRecord) -> Path | None:
    """The record's training log: artifacts.metrics_log, else metrics.jsonl (or detectron2's
    metrics.json) in artifacts.output_dir or config['output_dir']."""
    p = record.artifact_path("metrics_log")
    if p is not None:
        return p if p.is_file() else None
    folders = []
    out = record.artifact_path("output_dir")
    if out is not None:
        folders.append(out)
    cfg_out = record.config.get("output_dir")
    if isinstance(cfg_out, str) and cfg_out:
        folders.append(Path(cfg_out).expanduser())
        if record.source is not None and not Path(cfg_out).is_absolute():
            folders.append(record.source.parent / cfg_out)
    for folder in folders:
        for name in LOG_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_metrics_log(path: Path) -> dict[str, list[tuple[float, float]]]:
    """loss name -> [(step, value)] in step order, one value per step; lines need 'step' (or
    detectron2's 'iteration') and numeric 'loss*' / 'total_loss' fields. Malformed lines are
    skipped. A resumed run appends to its log from its last checkpoint, so steps repeat: the
    later line (the run that went on) wins."""
    curves: dict[str, dict[float, float]] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        step = obj.get("step", obj.get("iteration"))
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        for key, value in obj.items():
            if (key.startswith("loss") or key == "total_loss") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and math.isfinite(value):
                curves.setdefault(key, {})[float(step)] = float(value)
    return {key: sorted(points.items()) for key, points in curves.items()}
