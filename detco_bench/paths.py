"""Output paths checked before anything is written: one `UserError` line instead of a traceback
from deep inside a run, and nothing created for a run that cannot write its results."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detco_bench.errors import UserError


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read_only_file_system(path: Path) -> bool:
    """Whether `path` lies on a file system mounted read-only (where root cannot write either)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` is a folder, or can be created as one, in a place this process can write to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK) or _read_only_file_system(base):
        raise UserError(f"{flag} {path}: cannot write in {base} (permission denied)")
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` can be written as a file: not a folder, and its folder can be created and written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path")
    check_output_folder(path.parent, flag=f"{flag} {path}:")
    return path


def _related(a: Path, b: Path) -> bool:
    """`a` is `b`, one of its folders, or something inside it."""
    a, b = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return a == b or a in b.parents or b in a.parents


@contextmanager
def output_errors(path: str | os.PathLike, flag: str = "--out") -> Iterator[None]:
    """Turn an OSError about `path`, a folder above it or a file inside it into one `UserError`.

    The permission bits `check_output_folder` reads say nothing to root, and a special file
    system (/proc, a root-squashed NFS share) refuses what they allow: the first write is where
    such an output shows it cannot be created. Errors about other paths (the inputs) propagate."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None or not _related(Path(os.fsdecode(exc.filename)), Path(path)):
            raise
        raise UserError(f"{flag} {path}: cannot write {os.fsdecode(exc.filename)}: {exc.strerror or exc}") from None


def make_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check `path` (`check_output_folder`) and create it; a failure is one `UserError`."""
    path = check_output_folder(path, flag)
    with output_errors(path, flag):
        path.mkdir(parents=True, exist_ok=True)
    return path
