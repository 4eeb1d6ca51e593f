"""`detco-bench pretrain` and the other foundation commands from the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detco_bench.cli import app
from pretrain.detco import DetCo
from pretrain.lock import LOCK_NAME, folder_lock
from pretrain.train import load_checkpoint

runner = CliRunner()

TINY = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "4", "--queue-size", "8", "--epochs", "1",
        "--synthetic-images", "8", "--workers", "0", "--no-randaugment", "--no-progress"]


def _error_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("pretrain", "doctor", "data"):
        assert command in result.stdout


def test_doctor_reports_environment() -> None:
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code in (0, 1)
    for word in ("torch", "torchvision", "detectron2", "CUDA", "coco", "cityscapes"):
        assert word in result.stdout


def test_smoke_pretraining_prints_checkpoint(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", "--preset", "smoke", "--data", "synthetic",
                                 "--out", str(tmp_path / "run"), *TINY])
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {tmp_path / 'run' / 'checkpoint.pth'}" in result.stdout
    # The split-BN fallback is logged (batch 4: 2 groups of 2 instead of 8), and the run ends with
    # a summary: epochs, final loss (the last metrics line's), img/s, wall-clock, both paths.
    assert "using 2 group(s)" in result.stdout and "split-BN: 2 groups of 2 images" in result.stdout
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    summary = result.stdout[result.stdout.index("pretraining finished"):]
    assert re.search(r"detco resnet18, epochs 1/1 \(2 steps\), final loss " + f"{last['loss']:.4f}", summary), summary
    assert re.search(r"throughput \d+\.\d img/s, wall-clock [\dhms. ]+, 2 BN group\(s\) per process", summary)
    assert summary.splitlines()[-1] == f"output folder: {tmp_path / 'run'}"
    # Rerunning with --resume on a finished run does no work and keeps the checkpoint.
    before = (tmp_path / "run" / "checkpoint.pth").stat().st_mtime_ns
    again = runner.invoke(app, ["pretrain", "--preset", "smoke", "--data", "synthetic",
                                "--out", str(tmp_path / "run"), "--resume", *TINY])
    assert again.exit_code == 0 and "already finished" in again.output
    assert (tmp_path / "run" / "checkpoint.pth").stat().st_mtime_ns == before
    assert "pretraining already finished" in again.stdout and f"final loss {last['loss']:.4f}" in again.stdout


@pytest.mark.parametrize("case", ["unknown_preset", "missing_data", "empty_data", "unreadable_data", "not_empty_out",
                                  "unwritable_out", "bad_queue", "bad_weights", "bn_splits_3", "bn_splits_0"])
def test_pretrain_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    out = tmp_path / "run"
    args = ["pretrain", "--preset", "smoke", "--data", "synthetic", "--out", str(out), *TINY]
    if case == "unknown_preset":
        args[2] = "no_such_preset"
    elif case == "missing_data":
        args[4] = str(tmp_path / "nowhere")
    elif case == "empty_data":
        (tmp_path / "empty").mkdir()
        args[4] = str(tmp_path / "empty")
    elif case == "unreadable_data":  # every image unreadable: refused before anything is written
        (tmp_path / "broken").mkdir()
        for i in range(3):
            (tmp_path / "broken" / f"img{i}.jpg").write_bytes(b"not a jpeg")
        args[4] = str(tmp_path / "broken")
    elif case == "not_empty_out":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    elif case == "unwritable_out":
        (tmp_path / "afile").write_text("x")
        args[6] = str(tmp_path / "afile" / "run")
    elif case == "bad_queue":
        args += ["--queue-size", "10"]
    elif case == "bad_weights":
        args += ["--stage-weights", "0.1,x"]
    elif case.startswith("bn_splits_"):  # batch 4: 3 groups do not divide it; 0 groups are none
        args += ["--bn-splits", case.removeprefix("bn_splits_")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    if case == "not_empty_out":
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
        assert (out / "precious.txt").read_text() == "keep me"
    elif case != "unwritable_out":
        assert not out.exists()


def test_pretrain_non_finite_loss_is_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails on its own (NaN at step 2) is not bad input: exit 1, one line, no traceback,
    and the step-1 checkpoint stays for --resume."""
    original = DetCo.forward
    calls = 0

    def forward(self: DetCo, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        nonlocal calls
        calls += 1
        total, terms = original(self, *args, **kwargs)
        if calls == 2:
            terms = dict(terms, **{"res4/g2l": torch.tensor(float("inf"))})
            total = total + float("inf")
        return total, terms

    monkeypatch.setattr(DetCo, "forward", forward)
    out = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "--preset", "smoke", "--data", "synthetic", "--out", str(out), *TINY,
                                 "--save-every-steps", "1"])
    assert result.exit_code == 1, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: loss became inf at step 2 (term res4/g2l)"), lines
    assert "Traceback" not in result.output and "checkpoint:" not in result.stdout
    assert load_checkpoint(out / "checkpoint.pth")["step"] == 1


def test_second_writer_on_the_same_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Another process holds the run folder's lock: refused at once, nothing written there."""
    out = tmp_path / "run"
    with folder_lock(out):
        result = runner.invoke(app, ["pretrain", "--preset", "smoke", "--data", "synthetic", "--out", str(out), *TINY])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "being written by another" in lines[0], lines
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    # Once the other writer is gone, the same command runs (a folder holding only a lock is empty).
    again = runner.invoke(app, ["pretrain", "--preset", "smoke", "--data", "synthetic", "--out", str(out), *TINY,
                                "--max-steps", "1"])
    assert again.exit_code == 0, again.output
    assert load_checkpoint(out / "checkpoint.pth")["step"] == 1
