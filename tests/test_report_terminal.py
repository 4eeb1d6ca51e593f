"""The terminal report fits 80 columns; the plots: sorted, de-duplicated curves, one legend per
panel, named metrics and error bars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.cells import cell_len
from test_report import record, write_fixture_store
from typer.testing import CliRunner

from detco_bench import report as rep
from detco_bench.cli import app
from detco_bench.records import write_record
from detco_bench.report.plots import deltas_figure, training_curves_figure

runner = CliRunner()
PER_CLASS = {f"bbox/AP-{c}": 10.0 + i for i, c in enumerate(
    ["circle", "ring", "square", "triangle", "star", "cross", "hexagon", "oval", "arrow", "heart"])}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = write_fixture_store(tmp_path / "runs")
    wide = {"bbox/AP": 14.7, "bbox/AP50": 28.4, "bbox/AP75": 13.2, "bbox/APs": 12.8, "bbox/APm": 25.5,
            "bbox/APl": 30.1, **PER_CLASS, "segm/AP": 12.0, "segm/AP50": 25.0, "segm/AP75": 11.0,
            "segm/APs": 9.0, "segm/APm": 20.0, "segm/APl": 25.0}
    assert len(wide) == 22
    for seed in (0, 1):
        write_record(folder, record("detco", "coco_fpn_1x.synthetic+opts", wide, seed=seed, engine="torchvision",
                                    epochs=2, config={"SEED": seed, "SOLVER": {"MAX_ITER": 500}}))
    return folder


def test_terminal_fits_80_columns(store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(store), "--check", "--provenance", "-f", "terminal",
                              "--out", str(tmp_path / "o")], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    assert "…" not in res.stdout and "..." not in res.stdout  # nothing squeezed into ellipses
    assert "not shown at 80 columns: segm/AP, segm/AP50, segm/AP75; see report.md" in res.stdout
    assert "bbox/AP-circle" not in res.stdout  # the per-class columns are in the files
    # the task heads its rows instead of repeating on each one
    assert sum(line.strip() == "coco_fpn_1x" for line in lines) == 1
    assert sum("coco_fpn_1x" in line for line in lines[:30]) == 1
    assert "DetCo 200ep [aaaaaaaa]" in res.stdout  # labels are text, not rich markup
    for heading in ("Δ vs in-harness baselines", "Check", "Provenance (8 run(s)", "Flags"):
        assert heading in res.stdout
    assert "+0.90 ± 1.38   0.092    +0.6   within noise" in res.stdout
    assert "6 pass, 0 FAIL" in res.stdout


def test_terminal_uses_a_wide_console(store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(store), "-f", "terminal", "--out", str(tmp_path / "o")],
                        env={"COLUMNS": "250"})
    assert "segm/AP75" in res.stdout and "not shown at" not in res.stdout.split("Other tasks")[0]


def test_resumed_log_is_sorted_and_deduplicated(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    first = [{"step": s, "loss": 10.0 - s} for s in (0, 1, 2, 3)]
    resumed = [{"step": s, "loss": 20.0 - s} for s in (2, 3, 4)]  # resumed from the step-2 checkpoint
    log.write_text("\n".join(json.dumps(x) for x in first + resumed) + "\n")
    assert rep.read_metrics_log(log) == {"loss": [(0.0, 10.0), (1.0, 9.0), (2.0, 18.0), (3.0, 17.0), (4.0, 16.0)]}


def test_training_curves_have_a_legend_per_panel(tmp_path: Path) -> None:
    records = []
    for seed, keys in ((0, ("loss", "loss_cls")), (1, ("loss", "loss_box"))):
        log = tmp_path / f"m{seed}.jsonl"
        log.write_text("\n".join(json.dumps({"step": s, **{k: 1.0 / (s + 1) for k in keys}}) for s in (9, 0, 5)))
        records.append(record("detco", "coco_fpn_1x", {"bbox/AP": 1.0}, seed=seed,
                              artifacts={"metrics_log": str(log)}))
    fig = training_curves_figure(records)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "loss_box", "loss_cls"]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["DetCo 200ep [aaaaaaaa] coco_fpn_1x s0", "DetCo 200ep [aaaaaaaa] coco_fpn_1x s1"],
                       ["DetCo 200ep [aaaaaaaa] coco_fpn_1x s1"], ["DetCo 200ep [aaaaaaaa] coco_fpn_1x s0"]]
    assert list(fig.axes[0].lines[0].get_xdata()) == [0.0, 5.0, 9.0]  # in step order


def test_delta_plot_names_the_metric_and_has_error_bars(store: Path) -> None:
    fig = deltas_figure(rep.build_report([store]))
    (ax,) = fig.axes
    assert ax.get_ylabel() == "Δ bbox/AP vs supervised"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["coco_fpn_1x\nbbox/AP"]
    assert len(ax.containers) >= 3  # bars of MoCo v2 and DetCo, and DetCo's 95% CI error bar
    from matplotlib.container import ErrorbarContainer

    assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == 1  # only DetCo has 2 vs 2 seeds
