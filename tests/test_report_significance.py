"""Significance of deltas: Welch's t-test and 95% CIs with known values, in-harness baselines."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from test_report import record, write_fixture_store
from typer.testing import CliRunner

from detco_bench import report as rep
from detco_bench.cli import app
from detco_bench.records import write_record
from detco_bench.report.significance import VERDICT_NOISE, VERDICT_SIGNIFICANT, VERDICT_UNTESTED

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_fixture_store(tmp_path / "runs")

# Welch's t-test example 1 of Wikipedia ("Welch's t-test", Examples): t = -2.46, df = 24.99,
# two-sided p = 0.021 (the values quoted there, computed independently of this code).
WIKI_A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
WIKI_A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_welch_known_values() -> None:
    s = rep.welch_delta(WIKI_A1, WIKI_A2)
    assert s.df == pytest.approx(24.99, abs=0.005)
    assert s.p == pytest.approx(0.021, abs=0.0005)
    se = math.sqrt(sum((x - sum(WIKI_A1) / 15) ** 2 for x in WIKI_A1) / 14 / 15
                   + sum((x - sum(WIKI_A2) / 15) ** 2 for x in WIKI_A2) / 14 / 15)
    assert s.delta / se == pytest.approx(-2.46, abs=0.005)
    assert s.high < 0 and s.verdict == VERDICT_SIGNIFICANT and s.within_noise is False


def test_welch_matches_scipy() -> None:
    from scipy import stats

    a, b = [39.8, 40.1, 39.6, 40.3, 39.9], [38.9, 39.2, 38.7]
    s = rep.welch_delta(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert s.p == pytest.approx(ref.pvalue, rel=1e-9) and s.df == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (s.low, s.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_welch_edge_cases() -> None:
    single = rep.welch_delta([40.0], [39.0, 39.2])
    assert single.delta == pytest.approx(0.9) and not single.tested and single.verdict == VERDICT_UNTESTED
    assert single.within_noise is None
    nan = rep.welch_delta([40.0, math.nan], [39.0, 39.2])
    assert math.isnan(nan.delta) and not nan.tested and nan.verdict == "NaN"
    exact = rep.welch_delta([40.0, 40.0], [39.5, 39.5])  # deterministic runs: the delta is exact
    assert (exact.low, exact.high, exact.p) == (pytest.approx(0.5), pytest.approx(0.5), 0.0)
    same = rep.welch_delta([40.0, 40.0], [40.0, 40.0])
    assert same.p == 1.0 and same.within_noise


def test_fixture_deltas_have_known_p_values(store: Path) -> None:
    """The test_report fixture: DetCo (40.0, 39.6) vs supervised (38.8, 39.0) on bbox/AP: Δ = 0.9,
    se = sqrt(0.08/2 + 0.02/2) = sqrt(0.05), t = 4.025, df = 0.05² / (0.04² + 0.01²) = 1.4706,
    p = 0.0917 (two-sided), 95% CI 0.9 ± t(0.975, 1.4706) x se = [-0.484, +2.284]: within noise."""
    r = rep.build_report([store])
    by = {(d.group.method, d.baseline.method, d.metric): d for d in r.deltas}
    d = by[("detco", "supervised", "bbox/AP")]
    assert d.stat.delta == pytest.approx(0.9) and (d.stat.n_a, d.stat.n_b) == (2, 2)
    assert d.stat.df == pytest.approx(0.0025 / 0.0017)
    assert d.stat.p == pytest.approx(0.09171, abs=1e-5)
    assert (d.stat.low, d.stat.high) == (pytest.approx(-0.48370, abs=1e-4), pytest.approx(2.28370, abs=1e-4))
    assert d.stat.verdict == VERDICT_NOISE
    assert d.paper == pytest.approx(39.5 - 38.9)  # the paper's DetCo vs supervised, coco_fpn_1x
    # MoCo v2 has one seed: delta without a test; random init is no baseline here (not measured)
    assert by[("detco", "mocov2", "bbox/AP")].stat.verdict == VERDICT_UNTESTED
    assert by[("mocov2", "supervised", "bbox/AP50")].stat.delta == pytest.approx(-0.2)
    assert {(m, b) for m, b, _ in by} == {("detco", "supervised"), ("detco", "mocov2"), ("mocov2", "supervised")}
    # the torchvision VOC run has no in-harness baseline on its engine: no delta
    assert all(x.task == "coco_fpn_1x" for x in r.deltas)


def test_significant_delta_with_five_seeds_and_table_marks(tmp_path: Path) -> None:
    for seed, (sup, det) in enumerate([(38.8, 40.1), (39.0, 40.3), (38.9, 39.9), (39.1, 40.2), (38.7, 40.0)]):
        write_record(tmp_path, record("supervised", "voc_c4_24k", {"bbox/AP": sup}, seed=seed))
        write_record(tmp_path, record("detco", "voc_c4_24k", {"bbox/AP": det}, seed=seed))
    r = rep.build_report([tmp_path])
    (d,) = r.deltas
    assert d.stat.verdict == VERDICT_SIGNIFICANT and d.stat.p < 1e-5 and d.stat.low > 0
    # the main table's delta row carries the same test (the renderers mark it)
    row = next(x for x in r.tables[0].rows if x.kind == "delta")
    assert row.stats["bbox/AP"] == d.stat and rep.delta_direction(row.values["bbox/AP"]) == "up"


def test_deltas_in_outputs(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(app, ["report", str(store), "-f", "md,csv,latex,html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    deltas = pd.read_csv(out / "deltas.csv")
    row = deltas[(deltas.method == "detco") & (deltas.baseline_method == "supervised")
                 & (deltas.metric == "bbox/AP")].iloc[0]
    assert row.p == pytest.approx(0.09171, abs=1e-5) and row.verdict == "within noise"
    assert row.reference_delta == pytest.approx(0.6)
    md = (out / "report.md").read_text()
    assert "## Δ vs in-harness baselines" in md
    assert "| +0.90 | [-0.48, +2.28] | 0.092 | +0.6 | within noise |" in md
    html = (out / "report.html").read_text()
    assert 'class="num noise"' in html  # the main table marks the delta within noise
    assert r"\noise{+0.9}" in (out / "report.tex").read_text()


def test_delta_plot_has_error_bars(store: Path) -> None:
    from matplotlib.container import ErrorbarContainer

    from detco_bench.report.plots import delta_points, deltas_figure, plot_deltas

    r = rep.build_report([store])
    points, paper, tasks = delta_points(r)
    detco = points["DetCo 200ep [aaaaaaaa] (detectron2)"]["coco_fpn_1x"]
    assert detco.metric == "bbox/AP" and detco.stat is not None and detco.stat.tested
    assert paper[("DetCo 200ep [aaaaaaaa] (detectron2)", "coco_fpn_1x")] == pytest.approx(0.6)
    assert plot_deltas(r)[:4] == b"\x89PNG"
    # The tested delta is drawn with its 95% CI: one error bar, from low to high.
    (ax,) = deltas_figure(r).axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    (segments,) = [lc.get_segments() for lc in bars[0].lines[2]]
    (segment,) = segments
    assert (segment[0][1], segment[1][1]) == (pytest.approx(detco.stat.low), pytest.approx(detco.stat.high))

