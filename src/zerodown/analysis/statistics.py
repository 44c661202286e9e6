"""The formulas of the canary judge: two proportions, two latency histograms.

Written here rather than imported. The judge needs the normal distribution
(`statistics.NormalDist`, in the standard library), Wilson's score interval,
Newcombe's interval for a difference of two proportions, the Mann-Whitney U
test on grouped data and an interval for a difference of two medians: some
eighty lines. scipy would add numpy and ~100 MB to every machine that runs
a proxy, and its `mannwhitneyu` takes raw observations, so a histogram of
millions of requests would have to be expanded to call it; here U comes from
the bucket counts in one pass. tests/unit/test_canary_statistics.py checks
each formula against published values and against a brute-force reference.

Every bound is one-sided at the confidence given (the judge asks "is the
canary worse?" and "is it surely not worse by the minimum effect?"), so a
(low, high) pair is a two-sided interval of 2 * confidence - 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from zerodown.stats import quantile

NORMAL = NormalDist()


def z_of(confidence: float) -> float:
    """The standard normal quantile of a one-sided bound at `confidence`."""
    return NORMAL.inv_cdf(confidence)


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


# -- two proportions ----------------------------------------------------------------


def wilson(events: int, n: int, z: float) -> Interval:
    """Wilson's score interval of a proportion (Wilson 1927).

    Unlike p +- z*se it does not collapse to [0, 0] at zero events: 0 errors
    in 40 requests still allows an error rate of several percent.
    """
    if n <= 0:
        raise ValueError("a proportion of no trials has no interval")
    p, z2 = events / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe(
    events_a: int, n_a: int, events_b: int, n_b: int, z: float, *, b_known: bool = False
) -> Interval:
    """Interval of p_a - p_b by Newcombe's hybrid score method (1998, method 10).

    It combines the two Wilson intervals, and keeps its coverage with the few
    events a canary step has, where the Wald interval claims certainty it does
    not have. `b_known`: p_b is taken as exact (a baseline without traffic
    is 0 %, as the judge documents), its interval the point itself.
    """
    p_a, a = events_a / n_a, wilson(events_a, n_a, z)
    p_b = events_b / n_b if n_b else 0.0
    b = Interval(p_b, p_b) if b_known else wilson(events_b, n_b, z)
    d = p_a - p_b
    low = d - math.sqrt((p_a - a.low) ** 2 + (b.high - p_b) ** 2)
    high = d + math.sqrt((a.high - p_a) ** 2 + (p_b - b.low) ** 2)
    return Interval(low, high)


# -- two histograms ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankTest:
    """Mann-Whitney U of canary against stable, from per-bucket counts."""

    u: float  # pairs (canary, stable) where the canary request was slower; ties count half
    slower: float  # u / (n_a * n_b): how often a canary request is the slower one (0.5: alike)
    z: float
    p_value: float  # one-sided: the canary is slower


def mann_whitney(a: Sequence[int], b: Sequence[int]) -> RankTest:
    """One-sided Mann-Whitney U test that `a` is stochastically larger than `b`.

    The counts are of ordered categories (latency buckets): every pair in one
    bucket is a tie, so U counts it half and the variance takes the usual tie
    correction, sum(t^3 - t) over the buckets. Normal approximation with a
    continuity correction, as scipy's `mannwhitneyu(method="asymptotic")`.
    """
    n_a, n_b = sum(a), sum(b)
    if n_a == 0 or n_b == 0:
        raise ValueError("a rank test needs observations on both sides")
    u, below = 0.0, 0
    for count_a, count_b in zip(a, b, strict=True):
        u += count_a * (below + count_b / 2)
        below += count_b
    n = n_a + n_b
    ties = sum((t := x + y) ** 3 - t for x, y in zip(a, b, strict=True))
    variance = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:  # every request of both in one bucket: no evidence either way
        return RankTest(u, 0.5, 0.0, 1.0)
    z = (u - n_a * n_b / 2 - 0.5) / math.sqrt(variance)
    return RankTest(u, u / (n_a * n_b), z, 1 - NORMAL.cdf(z))


def bucket_quantile(counts: Sequence[int], q: float) -> float:
    """The q-quantile of per-bucket latency counts by the data plane's own
    estimator (`zerodown.stats.quantile`: linear inside the bucket), q
    clamped to [0, 1]: the rank bounds of a median on a few requests can
    reach past either end."""
    return quantile(counts, min(max(q, 0.0), 1.0))


def median_bounds(counts: Sequence[int], z: float) -> Interval:
    """Distribution-free bounds of a median: the observations at ranks
    n/2 -+ z*sqrt(n)/2 (the binomial(n, 1/2) count below the true median)."""
    n = sum(counts)
    reach = z * math.sqrt(n) / 2 / n
    return Interval(bucket_quantile(counts, 0.5 - reach), bucket_quantile(counts, 0.5 + reach))


@dataclass(frozen=True, slots=True)
class Shift:
    """Canary median minus stable median, seconds, with its bounds."""

    estimate: float
    low: float
    high: float


def median_shift(a: Sequence[int], b: Sequence[int], z: float) -> Shift:
    """Median of `a` minus median of `b`, bounded by MOVER (Zou & Donner 2008):
    each median's own bounds recombined, as Newcombe's method does for rates."""
    m_a, m_b = bucket_quantile(a, 0.5), bucket_quantile(b, 0.5)
    ba, bb = median_bounds(a, z), median_bounds(b, z)
    d = m_a - m_b
    low = d - math.sqrt((m_a - ba.low) ** 2 + (bb.high - m_b) ** 2)
    high = d + math.sqrt((ba.high - m_a) ** 2 + (m_b - bb.low) ** 2)
    return Shift(d, low, high)
