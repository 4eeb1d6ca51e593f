"""Is a delta more than seed noise? Welch's t-test and the 95% confidence interval of a difference.

Seed noise on COCO is about 0.3 AP (VOC: 0.2 / 0.2 / 0.4) while the gaps between methods are
often a few tenths, so a delta means little without its interval. The two sides are seeds of two
groups with possibly different variances and sizes: Welch's test (unequal variances), with the
Welch-Satterthwaite degrees of freedom for the t quantile of the interval. scipy is imported only
when a test is computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE

VERDICT_SIGNIFICANT = "significant"
VERDICT_NOISE = "within noise"
VERDICT_UNTESTED = "n < 2"  # a side has a single seed: no variance, no test
VERDICT_NAN = "NaN"


@dataclass(frozen=True)
class DeltaStat:
    """mean(a) - mean(b), and, when both sides have >= 2 seeds, its 95% CI and Welch p-value."""

    delta: float
    n_a: int
    n_b: int
    low: float | None = None
    high: float | None = None
    p: float | None = None
    df: float | None = None

    @property
    def tested(self) -> bool:
        return self.p is not None

    @property
    def within_noise(self) -> bool | None:
        """True when the interval contains 0 (or p >= 0.05); None when not tested."""
        if not self.tested:
            return None
        assert self.low is not None and self.high is not None and self.p is not None
        return (self.low <= 0 <= self.high) or self.p >= ALPHA

    @property
    def verdict(self) -> str:
        if math.isnan(self.delta):
            return VERDICT_NAN
        noise = self.within_noise
        if noise is None:
            return VERDICT_UNTESTED
        return VERDICT_NOISE if noise else VERDICT_SIGNIFICANT


def _moments(values: Sequence[float]) -> tuple[int, float, float]:
    """(n, mean, sample variance; NaN for n < 2)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return n, mean, math.nan
    if max(values) == min(values):
        # Identical seeds: a variance of exactly 0, not a rounding residue that would make a t
        # statistic out of nothing.
        return n, mean, 0.0
    return n, mean, math.fsum((v - mean) ** 2 for v in values) / (n - 1)


def welch_deltas(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[DeltaStat]:
    """`welch_delta` of many (a, b) pairs, with one vectorised scipy call for all of them (a
    report can have tens of thousands of deltas; scipy's per-call overhead would dominate)."""
    memo: dict[int, tuple[int, float, float]] = {}  # the pairs share their groups' value lists

    def moments(values: Sequence[float]) -> tuple[int, float, float]:
        key = id(values)
        if key not in memo:
            memo[key] = _moments([float(x) for x in values])
        return memo[key]

    out: list[DeltaStat | None] = []
    tests: list[tuple[int, float, int, int, float, float]] = []  # (index, delta, n_a, n_b, se², df)
    for a, b in pairs:
        if not len(a) or not len(b):
            raise ValueError("welch_delta needs at least one value on each side")
        (na, ma, va), (nb, mb, vb) = moments(a), moments(b)
        delta = ma - mb
        if math.isnan(delta) or na < 2 or nb < 2:  # NaN on a side, or a side without a variance
            out.append(DeltaStat(delta, na, nb))
            continue
        se2 = va / na + vb / nb
        if se2 == 0:
            # Identical seeds on both sides: the test is undefined; the delta is exact.
            out.append(DeltaStat(delta, na, nb, delta, delta, 1.0 if delta == 0 else 0.0, None))
            continue
        df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        tests.append((len(out), delta, na, nb, se2, df))
        out.append(None)
    if tests:
        # Deferred: scipy.stats takes 1-2 s to import, and most reports (one seed) test nothing.
        from scipy import stats

        _, deltas, _, _, se2s, dfs = (np.array(col, dtype=float) for col in zip(*tests, strict=True))
        se = np.sqrt(se2s)
        half = stats.t.ppf(1 - ALPHA / 2, dfs) * se
        p = 2 * stats.t.sf(np.abs(deltas) / se, dfs)
        for k, (i, delta, na, nb, _, df) in enumerate(tests):
            out[i] = DeltaStat(delta, na, nb, delta - float(half[k]), delta + float(half[k]), float(p[k]), df)
    return [s for s in out if s is not None]


def welch_delta(a: Sequence[float], b: Sequence[float]) -> DeltaStat:
    """The delta mean(a) - mean(b) with its 95% CI (Welch-Satterthwaite df, t quantile) and the
    two-sided Welch t-test p-value (the t distribution of scipy.stats; the same test as
    ``scipy.stats.ttest_ind(a, b, equal_var=False)``). A NaN on either side gives a NaN delta and
    no test; fewer than 2 values on a side, no test."""
    return welch_deltas([(a, b)])[0]
