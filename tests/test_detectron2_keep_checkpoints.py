"""``--keep-checkpoints`` in the Detectron2 engine: its PeriodicCheckpointer keeps the newest K
periodic files (needs detectron2: marker `detectron2`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detco_bench.transfer import run_transfer
from tests.test_transfer_detectron2 import _plan, cache, checkpoint, data_root  # noqa: F401 (fixtures)

pytestmark = pytest.mark.detectron2


def _periodic(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("model_[0-9]*.pth"))


@pytest.mark.parametrize("keep,expected", [(1, ["model_0000002.pth"]),
                                           (0, ["model_0000000.pth", "model_0000001.pth", "model_0000002.pth"])])
def test_periodic_checkpoints_beyond_the_newest_k_are_deleted(
    keep: int, expected: list[str], data_root: Path, checkpoint: Path, cache: Path, tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "out"
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1"]
    plan = _plan("coco_fpn_12k", out, data_root, checkpoint, cache, tmp_path / "results", opts,
                 keep_checkpoints=keep)
    assert run_transfer(plan, log=lambda m: None).status == "success"
    assert _periodic(out) == expected
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
