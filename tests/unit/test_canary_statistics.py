"""The canary judge's formulas (analysis/statistics.py), checked against
published values and against brute force, then the judge's error rates over
seeded canaries looked at as the executor looks at them."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from zerodown.analysis import Criteria, Sample, judge
from zerodown.analysis.judge import fail_level
from zerodown.analysis.statistics import (
    bucket_quantile,
    mann_whitney,
    median_bounds,
    median_shift,
    newcombe,
    wilson,
    z_of,
)
from zerodown.stats import BUCKET_LABELS, LATENCY_BUCKETS, quantile

Z95_TWO_SIDED = 1.959963984540054

# -- proportions --------------------------------------------------------------------------

# Newcombe (1998), "Interval estimation for the difference between independent
# proportions", Statistics in Medicine 17:873-890, Table II, method 10.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "published"), NEWCOMBE_TABLE_II)
def test_newcombe_matches_the_published_table(
    counts: tuple[int, int, int, int], published: tuple[float, float]
) -> None:
    bounds = newcombe(*counts, Z95_TWO_SIDED)
    assert (bounds.low, bounds.high) == pytest.approx(published, abs=5e-5)


@pytest.mark.parametrize(("events", "n"), [(0, 40), (1, 20), (30, 100), (999, 1000), (7, 7)])
def test_wilson_bounds_solve_the_score_equation(events: int, n: int) -> None:
    # Wilson's bounds are the p where (p_hat - p)^2 = z^2 p (1 - p) / n.
    z, p_hat = 1.6448536269514722, events / n
    bounds = wilson(events, n, z)
    for p in (bounds.low, bounds.high):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-12)
    assert bounds.low <= p_hat <= bounds.high


def test_zero_errors_still_leave_room_for_some() -> None:
    # The Wald interval would say [0, 0]: certainty from 40 requests.
    assert wilson(0, 40, z_of(0.95)).high == pytest.approx(0.0634, abs=1e-4)
    # Rule of three: about 3/n at 95 %, one-sided.
    assert wilson(0, 3000, z_of(0.95)).high == pytest.approx(2.706 / 3002.7, rel=1e-3)


def test_a_known_baseline_has_no_width() -> None:
    known = newcombe(3, 100, 0, 0, z_of(0.95), b_known=True)
    alone = wilson(3, 100, z_of(0.95))
    assert (known.low, known.high) == pytest.approx((alone.low, alone.high))


# -- ranks ---------------------------------------------------------------------------------


def brute_force(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """U of `a` and its one-sided p by midranks of the pooled observations:
    the textbook computation, sharing no code with mann_whitney."""
    pooled = sorted([(x, 0) for x in a] + [(y, 1) for y in b])
    ranks: list[float] = []
    i = 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        ranks += [(i + 1 + j) / 2] * (j - i)
        i = j
    n_a, n_b, n = len(a), len(b), len(a) + len(b)
    u = (
        sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
        - n_a * (n_a + 1) / 2
    )
    # The permutation variance of a rank sum, midranks included.
    variance = n_a * n_b / (n * (n - 1)) * sum((r - (n + 1) / 2) ** 2 for r in ranks)
    z = (u - n_a * n_b / 2 - 0.5) / math.sqrt(variance)
    return u, 0.5 * math.erfc(z / math.sqrt(2))


def grouped(a: Sequence[float], b: Sequence[float]) -> tuple[list[int], list[int]]:
    values = sorted(set(a) | set(b))
    return [list(a).count(v) for v in values], [list(b).count(v) for v in values]


def test_mann_whitney_matches_scipys_documented_example() -> None:
    # scipy.stats.mannwhitneyu docs: U1 = 17, asymptotic two-sided p = 0.11134688653314041.
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    test = mann_whitney(*grouped(males, females))
    assert test.u == 17
    assert 2 * test.p_value == pytest.approx(0.11134688653314041, rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_mann_whitney_on_ties_matches_midranks(seed: int) -> None:
    rng = random.Random(seed)
    a = [rng.randint(0, 6) for _ in range(rng.randint(5, 60))]
    b = [rng.randint(0, 5) for _ in range(rng.randint(5, 60))]
    test = mann_whitney(*grouped(a, b))
    u, p = brute_force(a, b)
    assert test.u == u
    assert test.p_value == pytest.approx(p, rel=1e-9)


def test_mann_whitney_counts_millions_without_expanding_them() -> None:
    stable = [0, 0, 0, 50_000, 400_000, 900_000, 500_000, 100_000, 0, 0, 0, 0, 0, 0, 0, 0]
    canary = [n // 9 for n in stable]
    test = mann_whitney(canary, stable)
    assert test.slower == pytest.approx(0.5, abs=1e-5)  # // 9 rounds a little
    assert 0.4 < test.p_value < 0.6
    # One bucket slower, all of it: certainly slower.
    later = mann_whitney([0, *canary[:-1]], stable)
    assert later.p_value == 0.0  # z = 450: past what a float holds
    assert later.slower == pytest.approx(0.7778, abs=1e-4)  # ties within a bucket count half


def test_one_bucket_holding_everything_is_no_evidence() -> None:
    test = mann_whitney([0, 5, 0], [0, 50, 0])
    assert (test.slower, test.p_value) == (0.5, 1.0)


# -- medians from buckets ----------------------------------------------------------------------


def counts_of(*latencies: float) -> list[int]:
    counts = [0] * len(BUCKET_LABELS)
    for seconds in latencies:
        index = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), -1)
        counts[index] += 1
    return counts


def test_bucket_quantile_is_the_data_planes_estimator() -> None:
    counts = counts_of(*[0.004] * 50, *[0.03] * 40, *[0.3] * 10)
    for q in (0.1, 0.5, 0.77, 0.99):
        assert bucket_quantile(counts, q) == pytest.approx(quantile(counts, q))


def test_median_bounds_narrow_as_requests_grow() -> None:
    z = z_of(0.95)
    widths = []
    for n in (100, 400, 1600):
        counts = counts_of(*[0.02] * (n // 2), *[0.04] * (n // 2))
        bounds = median_bounds(counts, z)
        assert bounds.low <= bucket_quantile(counts, 0.5) <= bounds.high
        widths.append(bounds.high - bounds.low)
    # Ranks n/2 -+ z sqrt(n)/2: half as wide for four times the requests.
    assert widths[0] / widths[1] == pytest.approx(2, rel=0.01)
    assert widths[1] / widths[2] == pytest.approx(2, rel=0.01)


def test_a_millisecond_on_a_two_millisecond_service_is_bounded_below_5_ms() -> None:
    shift = median_shift(counts_of(*[0.003] * 100), counts_of(*[0.002] * 900), z_of(0.95))
    # Buckets (1, 2.5] and (2.5, 5] ms: the medians interpolate to 1.75 and 3.75 ms.
    assert shift.estimate == pytest.approx(0.002)
    assert 0.002 < shift.high < 0.005


# -- the judge's error rates -------------------------------------------------------------------


CRITERIA = Criteria(
    confidence=0.95,
    min_error_increase=0.01,
    min_latency_increase=0.1,
    min_latency_shift=0.005,
    min_requests=100,
)


def test_the_looks_spend_no_more_than_one_minus_confidence() -> None:
    looks = [100 * 2**k for k in range(30)]
    spent = sum(fail_level(CRITERIA, n) for n in looks)
    assert spent == pytest.approx(0.025, rel=1e-6)  # one check's half of 5 %
    assert fail_level(CRITERIA, 100) == pytest.approx(0.0125)
    assert fail_level(CRITERIA, 199) == pytest.approx(0.0125)
    assert fail_level(CRITERIA, 200) == pytest.approx(0.00625)


class Pool:
    """Requests drawn one look at a time: Bernoulli errors, log-normal latencies
    (sigma 0.5) counted into the data plane's buckets."""

    def __init__(self, rng: random.Random, error_rate: float, median: float) -> None:
        self.rng, self.error_rate, self.median = rng, error_rate, median
        self.requests = self.errors = 0
        self.counts = [0] * len(BUCKET_LABELS)

    def serve(self, n: int) -> None:
        rng = self.rng
        self.requests += n
        self.errors += sum(rng.random() < self.error_rate for _ in range(n))
        for i, c in enumerate(
            counts_of(*(rng.lognormvariate(math.log(self.median), 0.5) for _ in range(n)))
        ):
            self.counts[i] += c

    def sample(self) -> Sample:
        cumulative = [sum(self.counts[: i + 1]) for i in range(len(self.counts))]
        return Sample(self.requests, self.errors, 0.0, tuple(cumulative))


LOOKS = (100, 200, 400, 800, 1600, 3200)  # canary requests: once per doubling, as the executor


def first_verdict(seed: int, canary_errors: float, canary_median: float) -> tuple[str, int]:
    """A 20 % canary step beside a stable pool with 1 % errors and a 50 ms
    median; the first verdict and the canary requests it took (3200 at most)."""
    rng = random.Random(seed)
    canary, stable = Pool(rng, canary_errors, canary_median), Pool(rng, 0.01, 0.05)
    for look in LOOKS:
        canary.serve(look - canary.requests)
        stable.serve(4 * look - stable.requests)
        verdict = judge(canary.sample(), stable.sample(), CRITERIA).verdict
        if verdict != "inconclusive":
            return verdict, look
    return "inconclusive", LOOKS[-1]


TRIALS = 100


def verdicts(canary_errors: float, canary_median: float) -> dict[str, list[int]]:
    """verdict -> the canary requests each trial took to reach it."""
    found: dict[str, list[int]] = {}
    for seed in range(TRIALS):
        verdict, requests = first_verdict(seed, canary_errors, canary_median)
        found.setdefault(verdict, []).append(requests)
    return found


def test_a_healthy_canary_is_passed_and_rarely_rolled_back() -> None:
    found = verdicts(0.01, 0.05)
    # Measured: 94 passed (half of them by 800 canary requests), 6 rolled back.
    assert len(found.get("fail", [])) <= 8  # designed for 5 %; the approximations add a little
    assert len(found["pass"]) >= 92
    assert sorted(found["pass"])[len(found["pass"]) // 2] <= 800


def test_two_points_more_errors_are_rolled_back() -> None:
    found = verdicts(0.03, 0.05)
    # Measured: all rolled back; half by 400 canary requests, 86 by 800, 99 by 1600.
    assert found == {"fail": found["fail"]}
    within = sorted(found["fail"])
    assert within[TRIALS // 2 - 1] <= 400
    assert within[80] <= 800
    assert within[-1] <= 3200


def test_thirty_percent_slower_is_rolled_back_at_the_first_looks() -> None:
    found = verdicts(0.01, 0.065)
    # Measured: 96 at the first look (100 canary requests), the rest at 200.
    assert found == {"fail": found["fail"]}
    assert max(found["fail"]) <= 200
    assert found["fail"].count(100) >= 90
