"""One writer per output folder: an advisory lock (fcntl.flock) on ``<folder>/.detco-bench.lock``.

The operating system releases the lock when its process dies, so a folder left by a killed run
is taken over by the next one without any stale-lock heuristics. Whoever holds the lock is the
only writer, so it also removes the temporary files (``.NAME.*.tmp``, see `pretrain.atomic`) that
a write interrupted by a kill left behind. Shared by `pretrain` and the `detco_bench` harness.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pretrain.errors import PretrainInputError

LOCK_NAME = ".detco-bench.lock"


class FolderLockedError(PretrainInputError):
    """Another live process writes to the folder (the CLI prints one line and exits 2)."""


def stale_temp_files(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes directly in `folder`."""
    return sorted(p for p in folder.glob(".*.tmp") if p.is_file())


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the folder's lock for the block (creating the folder); raise `FolderLockedError` at once
    when another process holds it, `PretrainInputError` when the folder cannot be created or
    written. Yields the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # under a file, read-only, no permission: bad --out, not a crash
        raise PretrainInputError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderLockedError(
            f"{folder} is being written by another detco-bench process (pid {holder}); wait for it to finish "
            "or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for tmp in stale_temp_files(folder):
            tmp.unlink(missing_ok=True)
        yield folder
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_lock_file(path: Path) -> bool:
    """Whether `path` is a folder lock (not content: a folder holding only its lock is empty)."""
    return path.name == LOCK_NAME
