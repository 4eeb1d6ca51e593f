"""The effective config as the torchvision engine reads it.

Every task's YAML chain (``transfer_configs/``) starts from Base-Defaults.yaml, Detectron2's own
defaults for every key the engines read, so a key the task does not set has the value it would
have in a Detectron2 run of the same config, and `--opts` can override any of them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from detco_bench.transfer_config import get_key


@functools.cache
def detectron2_defaults() -> dict[str, Any]:
    """Detectron2's defaults for the keys the engines read: transfer_configs/Base-Defaults.yaml
    (the root of every task's chain, checked against detectron2 by a detectron2-marked test)
    plus detco-bench's own keys. Only consulted for configs that do not inherit from it."""
    from detco_bench.transfer_config import CUSTOM_KEYS, config_path, flatten, load_config_file

    return {**flatten(load_config_file(config_path("Base-Defaults.yaml"))), **CUSTOM_KEYS}


class Settings:
    """Read access to an effective config: ``s["SOLVER.BASE_LR"]`` (the config's value, else
    Detectron2's default; KeyError for a key neither knows)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def __getitem__(self, key: str) -> Any:
        missing = object()
        value = get_key(self.config, key, missing)
        if value is missing:
            defaults = detectron2_defaults()
            if key not in defaults:
                raise KeyError(key)
            return defaults[key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def int(self, key: str) -> int:
        return int(self[key])

    def float(self, key: str) -> float:
        return float(self[key])

    def list(self, key: str) -> list[Any]:
        value = self[key]
        return list(value) if isinstance(value, (list, tuple)) else [value]
