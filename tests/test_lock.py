"""One writer per folder: the advisory lock, its takeover after a kill, stale temp files."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.lock import LOCK_NAME, FolderLockedError, folder_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from pretrain.lock import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
       "    print('locked', flush=True); time.sleep(60)\n"


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    with folder_lock(tmp_path / "out"):
        with pytest.raises(FolderLockedError, match=r"pid \d+"):
            with folder_lock(tmp_path / "out"):
                pass
    with folder_lock(tmp_path / "out"):  # released at the end of the block
        pass
    assert (tmp_path / "out" / LOCK_NAME).is_file()


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    with pytest.raises(FolderLockedError, match=f"pid {proc.pid}"):
        with folder_lock(folder):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while True:
        try:
            with folder_lock(folder):
                break
        except FolderLockedError:
            assert time.time() < deadline
            time.sleep(0.05)


def test_temp_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".checkpoint.pth.x1y2.tmp").write_bytes(b"partial")
    (folder / "keep.tmp").write_bytes(b"not ours")  # not an atomic-write temp name
    with folder_lock(folder):
        assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK_NAME, "keep.tmp"])
