"""TEST.EVAL_PERIOD in the torchvision engine: evaluations every EVAL_PERIOD iterations and at the
end, each a metrics.jsonl line with its iteration, the record holding the final one; with PreciseBN
before each, and an interrupted run still resuming bit-exactly (RetinaNet, whose loss-normaliser
EMA travels in the checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from detco_bench.transfer import run_transfer
from tests.test_torchvision_engine import _one_thread, make_plan, read_record, world  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

OPTS = [
    "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "TEST.EVAL_PERIOD", "2",
    "TEST.PRECISE_BN.ENABLED", "True",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # 2-4 iterations score under 0.05: no predictions, NaN
]  # fmt: skip


def log_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_periodic_evaluation_and_exact_resume(
    world: dict[str, Path],  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import detco_bench.engines.torchvision.train.loop as T

    ref_out = tmp_path / "ref"
    reference = run_transfer(make_plan(world, "retinanet_12k", "resnet18", ref_out, OPTS), log=lambda m: None)
    assert reference.status == "success"
    lines = log_lines(ref_out)
    evals = [ln for ln in lines if "bbox/AP" in ln]
    assert [ln["step"] for ln in evals] == [2, 4]
    assert [ln["step"] for ln in lines if "total_loss" in ln] == [1, 4]  # LOG_PERIOD 20: the first and the last
    record = read_record(reference.record)
    assert record["metrics"]["bbox/AP"] == pytest.approx(evals[-1]["bbox/AP"])
    log = (ref_out / "log.txt").read_text()
    assert log.count("evaluating") == 2 and log.count("PreciseBN") == 2

    out = tmp_path / "resumed"

    def interrupt(done: int, values: dict[str, float]) -> None:
        if done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(make_plan(world, "retinanet_12k", "resnet18", out, OPTS), log=lambda m: None)
    monkeypatch.setattr(T, "after_step", None)
    first = torch.load(out / "model_0000001.pth", weights_only=True)
    assert first["rank_state"][0][""]["loss_normalizer"] != 100.0  # the EMA after 2 iterations
    outcome = run_transfer(make_plan(world, "retinanet_12k", "resnet18", out, OPTS), log=lambda m: None)
    assert outcome.status == "success"
    assert [ln["step"] for ln in log_lines(out) if "bbox/AP" in ln] == [2, 4]
    a = torch.load(out / "model_final.pth", weights_only=True)
    b = torch.load(ref_out / "model_final.pth", weights_only=True)
    assert a["rank_state"] == b["rank_state"]
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
