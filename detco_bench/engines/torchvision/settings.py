"""The effective config as the torchvision engine reads it.

Every task's YAML chain (``detco_bench/transfer_configs/``) starts from Base-Defaults.yaml, Detectron2's own
defaults for every key the engines read, so a key the task does not set has the value it would
have in a Detectron2 run of the same config, and `--opts` can override any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detco_bench.transfer_config import base_defaults, get_key

_MISSING = object()


class Settings:
    """Read access to an effective config: ``s["SOLVER.BASE_LR"]`` (the config's value, else
    Detectron2's default from `base_defaults`; KeyError for a key neither knows). The defaults
    only matter for configs that do not inherit from Base-Defaults.yaml (tests, benchmarks)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def __getitem__(self, key: str) -> Any:
        value = get_key(self.config, key, _MISSING)
        if value is _MISSING:
            defaults = base_defaults()
            if key not in defaults:
                raise KeyError(key)
            return defaults[key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when neither the config nor the defaults have it."""
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


def class_count_key(family: str) -> str:
    """The config key of the class count of `family`'s head."""
    if family == "cityscapes_sem":
        return "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
    if family == "retinanet":
        return "MODEL.RETINANET.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def mask_on(family: str, s: Settings) -> bool:
    """Whether a run of `family` trains instance masks."""
    return bool(s["MODEL.MASK_ON"]) and family != "cityscapes_sem"


def keypoint_on(family: str, s: Settings) -> bool:
    """Whether a run of `family` trains keypoints."""
    return family == "keypoint" or bool(s["MODEL.KEYPOINT_ON"])
