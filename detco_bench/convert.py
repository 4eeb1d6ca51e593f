"""Temporary shim: moved to `detco_bench.checkpoints`; deleted once detco_bench/transfer/ imports from there."""

from detco_bench.checkpoints import *  # noqa: F403
