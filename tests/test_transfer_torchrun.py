"""``torchrun detco-bench transfer``: rank 0 plans and writes, the other rank reads its plan, both
train in one gloo process group on the CPU, and one record comes out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from detco_bench.records import read_record
from detco_bench.synthetic import write_synthetic_dataset
from detco_bench.transfer.state import read_state
from detco_bench.transfer.torchrun import HANDOFF_FILE, torchrun_world
from tests.conftest import save_random_resnet

REPO = Path(__file__).resolve().parents[1]
TINY = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
        "TEST.PRECISE_BN.ENABLED", "False", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.FPN.OUT_CHANNELS", "64",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "128", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "DATALOADER.NUM_WORKERS", "0"]


def test_torchrun_world_from_the_environment() -> None:
    assert torchrun_world({}) is None
    assert torchrun_world({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "1", "RANK": "0"}) is None
    world = torchrun_world({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "RANK": "3", "LOCAL_WORLD_SIZE": "2",
                            "GROUP_RANK": "1"})
    assert world is not None and (world.rank, world.world, world.local_world, world.node) == (3, 4, 2, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_one_plan_one_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_dataset(data, "coco", num_train=4, num_val=2, seed=0, image_size=(64, 64))
    ck = save_random_resnet(tmp_path / "r18.pth")
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "detco_bench.cli", "transfer", "--task", "coco_fpn_1x", "--checkpoint", str(ck),
           "--out", str(out), "--device", "cpu", "--engine", "torchvision", "--data-root", str(data), "--cache-dir",
           str(tmp_path / "cache"), "--results", str(tmp_path / "records"), "--opts", *TINY]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = list((tmp_path / "records").glob("*.record.json"))
    assert len(records) == 1, "rank 0 alone writes the record"
    record = read_record(records[0])
    assert record.status == "success" and record.config["DETCO_BENCH"]["world_size"] == 2
    assert record.config["DETCO_BENCH"]["launcher"] == "torchrun"
    assert read_state(out)["status"] == "success" and read_state(out)["attempts"] == 1
    handoff = json.loads((out / HANDOFF_FILE).read_text())
    assert handoff["plan"]["run_id"] == record.run_id
    assert "world size 2" in (out / "log.txt").read_text()
    assert result.stdout.count("done: record") == 1


@pytest.mark.parametrize("bad", [["--opts", "SOLVER.MAX_ITER", "0"]])
def test_a_plan_rank_0_refuses_stops_every_rank(tmp_path: Path, bad: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "detco_bench.cli", "transfer", "--task", "coco_fpn_1x", "--checkpoint",
           str(save_random_resnet(tmp_path / "r18.pth")), "--out", str(tmp_path / "job"), "--device", "cpu",
           "--engine", "torchvision", "--data-root", str(tmp_path), *bad]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "at least one iteration" in result.stderr
    assert "no plan from rank 0" not in result.stderr  # the other rank was told, it did not time out
