"""The linear protocol under two CPU processes (gloo), as torchrun would launch it."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_pretrain_distributed import _free_port


def _worker(rank: int, port: int, data: Path, ck: Path, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from detco_bench.linear import preset_config, run_linear

    try:
        cfg = preset_config("protocol", epochs=2, batch_size=8, image_size=32, workers=0)
        run_linear(ck, data, out, cfg, show_progress=False)
    except Exception:
        (out.parent / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_protocol_with_two_processes(tmp_path: Path) -> None:
    from detco_bench.records import read_record, scan_records
    from tests.conftest import save_random_resnet
    from tests.test_linear import _easy_imagefolder

    data = _easy_imagefolder(tmp_path / "easy", per_class_train=4, per_class_val=3)
    ck = save_random_resnet(tmp_path / "r18.pth")
    mp.spawn(_worker, args=(_free_port(), data, ck, tmp_path / "out"), nprocs=2, join=True)
    records, skipped = scan_records([tmp_path / "out"])
    assert len(records) == 1 and not skipped, "rank 0 alone writes the record"
    record = read_record(records[0].source)
    assert 0.0 <= record.metrics["top1"] <= 100.0
    assert record.provenance["device"].startswith("cpu")
    state = torch.load(tmp_path / "out" / "linear_state.pth", weights_only=True)
    assert state["epoch"] == 2
