"""One writer per folder: the advisory lock, its takeover after a kill, stale temp files."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detco_bench.cli import app
from pretrain.lock import LOCK_NAME, FolderLockedError, folder_lock
from tests.conftest import save_random_resnet
from tests.test_linear import _easy_imagefolder

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


def test_run_on_a_folder_another_process_writes_exits_2_with_one_line(tmp_path: Path) -> None:
    ck = save_random_resnet(tmp_path / "r18.pth")
    data = _easy_imagefolder(tmp_path / "easy", per_class_train=2, per_class_val=1)
    out = tmp_path / "p"
    with folder_lock(out):  # another `run` on the same pipeline folder
        result = CliRunner().invoke(app, ["run", "--checkpoint", str(ck), "--out", str(out), "--suite", "linear:knn",
                                          "--linear-data", str(data), "--device", "cpu", "--no-report",
                                          "--linear-flags", "--image-size 32 --workers 0"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "another detco-bench process" in lines[0], lines
    assert [p.name for p in out.iterdir()] == [LOCK_NAME], "the refused pipeline wrote nothing"
