"""Output paths checked before anything is written: one `UserError` line instead of a traceback
from deep inside a run, and nothing created for a run that cannot write its results."""

from __future__ import annotations

import os
from pathlib import Path

from detco_bench.errors import UserError


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` is a folder, or can be created as one, in a place this process can write to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {base} (permission denied)")
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` can be written as a file: not a folder, and its folder can be created and written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path")
    check_output_folder(path.parent, flag=f"{flag} {path}:")
    return path
