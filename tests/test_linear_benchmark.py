"""benchmarks/linear_fast_vs_protocol.py runs on a fresh workdir, reads finished runs back, and
refuses bad input with one error line (exit 2). Its figures are printed, never asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "linear_fast_vs_protocol.py"
TINY = ["--train", "16", "--val", "8", "--size", "32", "--seeds", "0", "--heads", "sgd", "--aug-copies", "2",
        "--pretrain-images", "16", "--pretrain-epochs", "1", "--threads", "1"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCHMARK), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _per_seed_lines(stdout: str) -> list[str]:
    """The benchmark's per-run lines without the load average, which changes between runs."""
    return [re.sub(r"\(load [0-9.]+\)", "", line).rstrip() for line in stdout.splitlines()
            if line.startswith("  seed ")]


def test_fresh_workdir_runs_then_reads_back(tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = _run(*TINY, "--workdir", str(work))
    assert first.returncode == 0, first.stderr
    lines = _per_seed_lines(first.stdout)
    assert [line.split()[2] for line in lines] == ["protocol", "fast"], first.stdout
    assert (work / "resnet18_supervised.pth").is_file()
    records = sorted(work.glob("runs/*/*.record.json"))
    assert [p.parent.name for p in records] == ["fast_sgd-k2-gaussian-seed0", "protocol-seed0"]
    stamps = [p.stat().st_mtime_ns for p in records]
    # Again on the same workdir: nothing is rerun, the same figures are printed from the records.
    second = _run(*TINY, "--workdir", str(work))
    assert second.returncode == 0, second.stderr
    assert _per_seed_lines(second.stdout) == lines
    assert [p.stat().st_mtime_ns for p in sorted(work.glob("runs/*/*.record.json"))] == stamps
    # Other data in the same workdir is refused, not mixed in; nothing is written.
    other = _run(*[("20" if a == "16" and i == 1 else a) for i, a in enumerate(TINY)], "--workdir", str(work))
    assert other.returncode == 2
    assert other.stderr.strip().startswith("error:") and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert sorted(work.glob("runs/*/*.record.json")) == records


def test_bad_size_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run(*[("16" if a == "32" else a) for a in TINY], "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list((tmp_path / "w").glob("runs/*"))
