"""Two CPU processes (gloo): key gathering, shuffle-BN and the queue behave as in MoCo."""

from __future__ import annotations

import copy
import os
import socket
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checks(rank: int, out: Path) -> None:
    from pretrain.detco import DetCo
    from pretrain.distributed import batch_shuffle, batch_unshuffle, concat_all_gather
    from pretrain.split_bn import use_split_bn
    from tests.conftest import tiny_config

    # Gather: rank order, every rank sees the same global batch.
    x = torch.arange(6, dtype=torch.float32).view(3, 2) + 100 * rank
    g = concat_all_gather(x)
    expected = torch.cat([torch.arange(6, dtype=torch.float32).view(3, 2) + 100 * r for r in range(WORLD)])
    assert torch.equal(g, expected)

    # Shuffle: each rank gets a slice of a global permutation (shared across the tensors passed),
    # the slices of all ranks partition the global batch, and unshuffle restores the order.
    torch.manual_seed(rank)  # different local RNGs: the permutation must still agree (broadcast)
    ids = torch.arange(4, dtype=torch.float32) + 4 * rank  # global ids 0..7
    patches = ids.view(4, 1, 1).expand(4, 9, 3).contiguous()
    (ids_s, patches_s), unshuffle = batch_shuffle(ids, patches)
    assert torch.equal(patches_s[:, 0, 0], ids_s), "image and its patch set must move together"
    all_ids = concat_all_gather(ids_s)
    assert sorted(all_ids.tolist()) == list(range(8))
    restored = batch_unshuffle(ids_s * 10, unshuffle)
    assert torch.equal(restored, ids * 10)

    # Queue: after a DetCo step both ranks hold identical queues containing both ranks' keys.
    cfg = tiny_config(queue_size=16)
    torch.manual_seed(0)
    model = DetCo(cfg)
    views = {"im_q": torch.randn(2, 3, 32, 32) + rank, "im_k": torch.randn(2, 3, 32, 32) + rank,
             "patches_q": torch.randn(2, 9, 3, 16, 16), "patches_k": torch.randn(2, 9, 3, 16, 16)}
    model(**views)
    assert int(model.queue_ptr) == 4  # global batch 2 x 2 ranks
    queues = concat_all_gather(model.queue_global[None])
    assert torch.equal(queues[0], queues[1])

    # Split-BN on one process with WORLD groups == plain BN on these WORLD processes, each on its
    # share of one global batch: same outputs, and running statistics equal to the ranks' mean.
    torch.manual_seed(0)  # the same BN and global batch on every rank
    bn, x = nn.BatchNorm2d(3), torch.randn(8, 3, 4, 4) * 2 + 1
    plain = copy.deepcopy(bn)
    out_plain = plain(x[rank::WORLD])
    outs = concat_all_gather(out_plain[None].detach())
    stats = concat_all_gather(torch.stack([plain.running_mean, plain.running_var])[None])
    split = copy.deepcopy(bn)
    use_split_bn(split, WORLD)
    out_split = split(x).detach()
    for r in range(WORLD):
        torch.testing.assert_close(out_split[r::WORLD], outs[r], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.running_mean, stats[:, 0].mean(0))
    torch.testing.assert_close(split.running_var, stats[:, 1].mean(0))

    # A NaN on one rank stops both ranks at the same step and term (no rank is left waiting).
    from pretrain.errors import NonFiniteLossError
    from pretrain.train import check_finite

    terms = {"res4/g2g": torch.tensor(1.0), "res5/l2l": torch.tensor(float("nan") if rank == 1 else 2.0)}
    try:
        check_finite(torch.tensor(3.0), terms, 7, None)
    except NonFiniteLossError as exc:
        assert (exc.step, exc.term) == (7, "res5/l2l"), (exc.step, exc.term)
    else:
        raise AssertionError(f"rank {rank} did not stop")
    assert check_finite(torch.tensor(1.0 + rank), {"res5/g2g": torch.tensor(1.0)}, 8, None) == 1.5
    (out / f"rank{rank}.ok").write_text("ok")


def _worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    try:
        _checks(rank, out)
    except Exception:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _train_worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pretrain.train import train
    from tests.conftest import tiny_config

    try:
        train(tiny_config(epochs=1, batch_size=4, queue_size=8), out / "run", show_progress=False)
    except Exception:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_process_gather_shuffle_and_queue(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), tmp_path), nprocs=WORLD, join=True)
    assert (tmp_path / "rank0.ok").exists() and (tmp_path / "rank1.ok").exists()


def test_two_process_training_run(tmp_path: Path) -> None:
    """The whole loop under DDP (gloo): rank 0 writes one checkpoint for the global batch."""
    mp.spawn(_train_worker, args=(_free_port(), tmp_path), nprocs=WORLD, join=True)
    from pretrain.train import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert state["finished"] and state["step"] == 3  # 12 images / global batch 4
    assert state["environment"]["world_size"] == WORLD
    assert state["bn_splits"] == 1 and state["config"]["bn_splits"] == 1  # DDP: real shuffle-BN, no split
    assert int(state["model"]["queue_ptr"]) == (3 * 4) % 8
