"""The pipeline's settings and its state file (ROOT/pipeline.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detco_bench.errors import UserError

STATE_FILE = "pipeline.json"


@dataclass
class PipelineConfig:
    checkpoint: str
    suite: str
    seeds: int = 1
    engine: str = "auto"
    launcher: str = "local"
    device: str | None = None
    data_root: str | None = None  # detection datasets (DETECTRON2_DATASETS layout)
    linear_data: str | None = None  # ImageFolder root for the linear probes
    max_retries: int = 1
    method: str | None = None
    extra_opts: tuple[str, ...] = ()  # appended to every transfer job's --opts
    linear_flags: tuple[str, ...] = ()  # appended to every linear job's command line
    slurm: dict[str, Any] = field(default_factory=dict)
    baselines: str | None = None  # in-harness baselines (see `baselines.parse_baselines`)


def load_state(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is corrupt; move it away to start the pipeline afresh") from None
