"""pretrain.heap: freed memory stays in the process within `freed_memory_kept`, and only there."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.heap import _glibc, freed_memory_kept

pytestmark = pytest.mark.skipif(_glibc() is None, reason="needs glibc's malloc (Linux)")

#: Over glibc's largest mmap threshold (32 MB): by default such a block is mapped when allocated and
#: unmapped when freed, so touching a fresh one faults in every page (4 KiB each) again.
BLOCK_BYTES = 64 << 20


def faults_per_allocation(rounds: int = 8) -> list[int]:
    """Minor page faults of each of `rounds` allocate-fill-free cycles of one BLOCK_BYTES tensor."""
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(BLOCK_BYTES // 4, dtype=torch.float32)
        block.fill_(1.0)
        del block
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts


def test_freed_block_is_reused_without_page_faults_inside() -> None:
    """In a fresh process (so that no earlier test's free heap memory can serve the block)."""
    script = (
        "import json\n"
        "from pretrain.heap import freed_memory_kept\n"
        "from tests.test_pretrain_heap import faults_per_allocation\n"
        "default = faults_per_allocation()\n"
        "with freed_memory_kept() as kept:\n"
        "    inside = faults_per_allocation(24)\n"
        "print(json.dumps([kept, default, inside]))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    kept, default, inside = json.loads(out.stdout.splitlines()[-1])
    pages = BLOCK_BYTES // 4096
    assert kept
    assert min(default) > pages // 2, default  # glibc's default: every cycle maps the block anew
    # The first cycles grow the heap until a free stretch fits the block with its 2 MB alignment
    # (a few, as many as the heap's history needs); from then on the block is reused.
    assert max(inside[-4:]) < pages // 100, inside


def resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def test_freed_memory_stays_inside_and_goes_back_after() -> None:
    size = 4 * BLOCK_BYTES
    with freed_memory_kept():
        block = torch.ones(size // 4, dtype=torch.float32)
        with_block = resident_bytes()
        del block
        held = resident_bytes()
    assert held > with_block - size // 4  # freed, but still the process's
    assert resident_bytes() < held - size // 2  # handed back to the kernel on leaving
