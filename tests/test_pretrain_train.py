"""The training loop: checkpoints, exact resume (also after a real SIGKILL), data edge cases, bf16
stability, and stopping on a non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from pretrain.config import PretrainConfig
from pretrain.detco import DetCo
from pretrain.errors import NonFiniteLossError, PretrainInputError
from pretrain.train import CHECKPOINT_FORMAT, load_checkpoint, train
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _final_model(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_checkpoint_format(tmp_path: Path) -> None:
    ckpt = train(tiny_config(epochs=1), tmp_path / "run", show_progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["format_version"] == 1
    assert (state["method"], state["arch"], state["epoch"], state["step"]) == ("detco", "resnet18", 1, 3)
    assert state["finished"] is True
    # The config records the split-BN groups the run used: batch 4 on one process -> 2 groups of 2.
    assert PretrainConfig.from_dict(state["config"]) == tiny_config(epochs=1, bn_splits=2)
    assert state["bn_splits"] == 2 and json.loads((tmp_path / "run" / "config.json").read_text())["bn_splits"] == 2
    assert state["loss"] is not None and math.isfinite(state["loss"])
    # The exported backbone is a torchvision ResNet state dict (fc excepted) equal to the query trunk.
    import torchvision

    missing, unexpected = torchvision.models.resnet18().load_state_dict(state["backbone"], strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    for k, v in state["backbone"].items():
        assert torch.equal(v, state["model"][f"encoder_q.backbone.{k}"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert {"loss", "lr", "img_per_s", "loss/res5/g2l", "loss/res2/l2l"} <= set(lines[0])
    assert {x["bn_splits"] for x in lines} == {2}
    assert state["loss"] == lines[-1]["loss"]
    assert any((tmp_path / "run" / "tb").iterdir())


def test_resume_after_stop_matches_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2)  # 3 steps per epoch
    full = train(cfg, tmp_path / "full", show_progress=False)
    partial = train(dataclasses.replace(cfg, max_steps=4), tmp_path / "split", show_progress=False)
    assert load_checkpoint(partial)["step"] == 4 and not load_checkpoint(partial)["finished"]
    resumed = train(cfg, tmp_path / "split", resume=True, show_progress=False)
    _assert_same_weights(_final_model(full), _final_model(resumed))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_configuration(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1, max_steps=1)
    train(cfg, tmp_path / "run", show_progress=False)
    with pytest.raises(PretrainInputError, match="different configuration.*temperature"):
        train(dataclasses.replace(cfg, temperature=0.5), tmp_path / "run", resume=True, show_progress=False)
    # An explicit, different number of BN groups changes what is learned: refused too.
    with pytest.raises(PretrainInputError, match="different configuration.*bn_splits: run has 2, asked 1"):
        train(dataclasses.replace(cfg, bn_splits=1), tmp_path / "run", resume=True, show_progress=False)


def test_real_kill_and_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL a CLI run right after a mid-epoch checkpoint, resume it, compare with a clean run."""
    common = ["--preset", "smoke", "--data", "synthetic", "--arch", "resnet18", "--image-size", "32",
              "--batch-size", "4", "--queue-size", "16", "--epochs", "2", "--synthetic-images", "16",
              "--workers", "0", "--no-randaugment", "--no-progress"]
    cli = [sys.executable, "-m", "detco_bench.cli", "pretrain"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([*cli, *common, "--out", str(tmp_path / "clean")], check=True, env=env,
                   capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen([*cli, *common, "--out", str(run), "--save-every-steps", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            proc.send_signal(signal.SIGKILL)
            killed_at = len(metrics.read_text().splitlines())
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed; make it longer"
    assert not load_checkpoint(run / "checkpoint.pth")["finished"]
    stale = run / ".checkpoint.pth.k1ll3d.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    # The killed run's lock is taken over; its temp file is removed by the next writer.
    subprocess.run([*cli, *common, "--out", str(run), "--resume"], check=True, env=env, capture_output=True)
    assert not stale.exists()
    _assert_same_weights(_final_model(tmp_path / "clean" / "checkpoint.pth"),
                         _final_model(run / "checkpoint.pth"))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def _write_images(folder: Path, n: int, bad: int = 0) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        sub = folder / f"n{i % 2:08d}"  # ImageNet-like class sub-folders
        sub.mkdir(exist_ok=True)
        Image.new("RGB", (40, 36), (i * 20 % 256, 100, 50)).save(sub / f"img{i}.JPEG")
    for i in range(bad):
        (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")


def test_image_folder_recursive_with_unreadable_images(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 10, bad=2)
    cfg = tiny_config(data=str(tmp_path / "imgs"), epochs=1, batch_size=4, queue_size=8)
    ckpt = train(cfg, tmp_path / "run", show_progress=False)
    state = load_checkpoint(ckpt)
    assert state["step"] == 3  # 12 files -> 3 batches of 4
    assert state["bad_images"] >= 1  # every unreadable file met was skipped and counted


@pytest.mark.parametrize("setup,message", [
    ("missing", "does not exist"),
    ("empty", "no images found"),
    ("file", "is not a folder"),
    ("unreadable", r"none of the 3 image file\(s\) under .* can be read \(unreadable image .*broken0.jpg"),
])
def test_bad_data_paths(tmp_path: Path, setup: str, message: str) -> None:
    data = tmp_path / "data"
    if setup == "empty":
        data.mkdir()
    elif setup == "file":
        data.write_text("x")
    elif setup == "unreadable":
        _write_images(data, 0, bad=3)
    with pytest.raises(PretrainInputError, match=message):
        train(tiny_config(data=str(data)), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists(), "nothing is written for a run that cannot start"


def test_fewer_images_than_one_batch(tmp_path: Path) -> None:
    with pytest.raises(PretrainInputError, match="fewer than one global batch"):
        train(tiny_config(synthetic_images=3), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


AMP_STEPS = 20
AMP_PARALLEL = 2
# A bf16 run in a fresh interpreter (its own heap history) on one thread: on a busy 2-core box two
# OpenMP threads per process run these tiny kernels ~10x slower (measured: 80-100 s instead of 8 s),
# and the load the test needs comes from the processes running at once.
AMP_WORKER = """import json, sys, torch
from pretrain.config import PretrainConfig
from pretrain.train import train
torch.set_num_threads(1)
train(PretrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], show_progress=False)
"""


def _assert_stable_bf16_run(run: Path) -> None:
    """AMP_STEPS logged steps with finite losses, and finite weights of a sane size (a step that
    trained on uninitialised gradient memory leaves ~1e29 or NaN there)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, AMP_STEPS + 1)), run
    assert all(math.isfinite(v) for x in lines for k, v in x.items() if k.startswith("loss")), run
    state = load_checkpoint(run / "checkpoint.pth")
    assert state["step"] == AMP_STEPS and state["finished"]
    for name, value in state["model"].items():
        if value.is_floating_point() and "running_" not in name:
            assert value.abs().max() < 100, f"{run.name} {name}: max |w| {float(value.abs().max()):.3g}"


def test_amp_and_channels_last_step_on_cpu(tmp_path: Path) -> None:
    """bf16 autocast + channels_last (+ split-BN, 2 groups of 2) for 20 steps on the CPU, here and at
    the same time in 2 more processes: the NaN of issue 13 showed only under parallel load, which
    changes the memory the bf16 kernels are handed. Every run must end with finite losses and sane
    weights."""
    cfg = tiny_config(epochs=1, synthetic_images=4 * AMP_STEPS, amp=True, channels_last=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runs = [tmp_path / f"parallel{i}" for i in range(AMP_PARALLEL)]
    procs = [subprocess.Popen([sys.executable, "-c", AMP_WORKER, json.dumps(cfg.to_dict()), str(run)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for run in runs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny bf16 kernels: one thread is ~5x faster than two on a busy 2-core box
    try:
        train(cfg, tmp_path / "run", show_progress=False)
    finally:
        torch.set_num_threads(threads)
        errors = [proc.communicate(timeout=600)[1] for proc in procs]
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err[-3000:]
    for run in [tmp_path / "run", *runs]:
        _assert_stable_bf16_run(run)


def _nan_at_call(monkeypatch: pytest.MonkeyPatch, bad_call: int, term: str, run: Path) -> list[bytes]:
    """Make the `bad_call`-th DetCo forward return NaN for `term` (and the total); returns a list that
    receives the checkpoint's bytes as they were on disk when that step began."""
    original = DetCo.forward
    calls = 0
    on_disk: list[bytes] = []

    def forward(self: DetCo, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        nonlocal calls
        calls += 1
        total, terms = original(self, *args, **kwargs)
        if calls == bad_call:
            ckpt = run / "checkpoint.pth"
            on_disk.append(ckpt.read_bytes() if ckpt.exists() else b"")
            terms = dict(terms, **{term: torch.tensor(float("nan"))})
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(DetCo, "forward", forward)
    return on_disk


def test_non_finite_loss_stops_before_the_step_is_written(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(epochs=1, save_every_steps=1)  # 3 steps, a checkpoint after each
    on_disk = _nan_at_call(monkeypatch, 2, "res3/l2l", run)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 2 \(term res3/l2l\).*holds step 1") as err:
        train(cfg, run, show_progress=False)
    assert (err.value.step, err.value.term, err.value.checkpoint_step) == (2, "res3/l2l", 1)
    assert len(str(err.value).splitlines()) == 1
    # Nothing of step 2 reached the run folder: the checkpoint is byte for byte the one of step 1.
    assert (run / "checkpoint.pth").read_bytes() == on_disk[0]
    state = load_checkpoint(run / "checkpoint.pth")
    assert state["step"] == 1 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    text = (run / "metrics.jsonl").read_text()
    assert [json.loads(x)["step"] for x in text.splitlines()] == [1] and "NaN" not in text

    monkeypatch.undo()  # the cause is gone: --resume continues from the step-1 checkpoint
    state = load_checkpoint(train(cfg, run, resume=True, show_progress=False))
    assert state["step"] == 3 and state["finished"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_non_finite_loss_before_any_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_at_call(monkeypatch, 1, "res5/g2g", tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="at step 1 .*no checkpoint was written") as err:
        train(tiny_config(epochs=1), tmp_path / "run", show_progress=False)
    assert err.value.checkpoint_step is None
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
