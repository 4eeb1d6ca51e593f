"""Folders of data shipped inside the package (task configs, reference tables), read through
importlib.resources so that an installed wheel finds them exactly like a checkout does."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path


def package_data_dir(name: str, env_var: str) -> Path:
    """``detco_bench/<name>/``, or the folder the environment variable `env_var` names instead."""
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    return Path(str(importlib.resources.files("detco_bench") / name))
