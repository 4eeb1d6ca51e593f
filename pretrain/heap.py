"""Keeping freed memory in the process from one training step to the next (glibc's malloc).

A CPU training step allocates and frees the same tensors every step: the activations the backward
needs, the gradients (`zero_grad(set_to_none=True)` frees them), the logits. glibc's malloc hands
every block over its mmap threshold (at most 32 MB) back to the kernel when it is freed, and trims
the top of its heap whenever more than the trim threshold is free there; so the next step maps the
same memory again and the kernel zero-fills it page by page on first touch. A DetCo step
(ResNet-50, batch 8, one thread) took 100k-290k page faults and 0.2-0.5 s of kernel time, more than
a MoCo v2 step: DetCo's local heads alone hold 71M parameters, 284 MB of fresh gradient memory each
step.

`freed_memory_kept` turns both off for the length of a training loop: every block comes from the
heap, and freed memory stays there for the next step (the process holds its peak memory, which a
training loop reaches in its first step anyway). Afterwards glibc's defaults come back and the free
memory is returned. Values are untouched: this changes where memory comes from, not what is
computed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt(3) parameters and glibc's defaults for them (malloc.h, malloc/malloc.c).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has mallopt and malloc_trim), else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within it, glibc's malloc keeps freed memory for reuse (see the module docstring); process-wide,
    inherited by data workers forked inside. Yields whether it applies (False without glibc)."""
    libc = _glibc()
    # mallopt returns 1 on success. Without mmap, glibc still maps memory when a heap cannot grow
    # (the main heap past its brk limit, a thread's own arena), so no allocation that would have
    # succeeded fails.
    applied = libc is not None and bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    try:
        yield applied
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
