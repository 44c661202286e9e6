"""The canary judge: samples from pool totals, windows, verdicts. Pure; the
statistical tests draw seeded requests through the data plane's own counters."""

from __future__ import annotations

import math
import random

import pytest

from zerodown.analysis import NO_TRAFFIC, Judgement, Sample, judge, pool_samples
from zerodown.config import defaults
from zerodown.proxy.metrics import Histogram, TargetMetrics
from zerodown.routing import PoolName
from zerodown.stats import (
    BUCKET_LABELS,
    Counters,
    Latency,
    PoolStats,
    ServiceStats,
    Stats,
    pool_entry,
    sum_counters,
)

THRESHOLDS = {
    "error_rate_threshold": defaults.ERROR_RATE_THRESHOLD,  # 0.05
    "p99_threshold": defaults.P99_THRESHOLD,  # 1.5
    "min_requests": defaults.MIN_REQUESTS,  # 100
}


def verdict(canary: Sample, stable: Sample, **overrides: float) -> Judgement:
    settings = {**THRESHOLDS, **overrides}
    return judge(
        canary,
        stable,
        error_rate_threshold=float(settings["error_rate_threshold"]),
        p99_threshold=float(settings["p99_threshold"]),
        min_requests=int(settings["min_requests"]),
    )


# -- verdicts --------------------------------------------------------------------------

S = Sample
CASES = [
    # name, canary, stable, verdict, words the reason must contain
    ("alike", S(200, 2, 0.10), S(2000, 20, 0.10), "pass", "within thresholds"),
    ("clean canary", S(500, 0, 0.05), S(4500, 45, 0.08), "pass", "0.00% (0/500)"),
    ("errors", S(200, 30, 0.10), S(2000, 20, 0.10), "fail", "error_rate_threshold"),
    ("slow", S(200, 2, 0.20), S(2000, 20, 0.10), "fail", "2.00x, more than 1.5x"),
    ("both", S(200, 30, 0.20), S(2000, 20, 0.10), "fail", "error rate 15.00% (30/200)"),
    ("few requests", S(99, 0, 0.10), S(2000, 20, 0.10), "inconclusive", "99 canary requests"),
    ("few, all failing", S(99, 99, 9.0), S(2000, 0, 0.1), "inconclusive", "100 needed"),
    ("no canary traffic", S(0, 0, 0.0), S(2000, 0, 0.1), "inconclusive", "0 canary requests"),
    ("exactly min_requests", S(100, 0, 0.10), S(900, 0, 0.10), "pass", "(0/100)"),
    # no stable traffic: a 0 % baseline, and no p99 to compare with
    ("stable idle, canary ok", S(200, 4, 0.5), S(0, 0, 0.0), "pass", "vs none"),
    ("stable idle, canary failing", S(200, 20, 0.5), S(0, 0, 0.0), "fail", "10.00% (20/200)"),
    # stable failing too: only the difference counts
    ("both failing alike", S(200, 64, 0.1), S(2000, 600, 0.1), "pass", "32.00%"),
    ("canary worse than failing stable", S(200, 72, 0.1), S(2000, 600, 0.1), "fail", "36.00%"),
    # ties at a threshold pass: "more than" in the docs
    ("error tie", S(100, 15, 0.1), S(1000, 100, 0.1), "pass", "15.00%"),
    ("error tie, other rates", S(100, 6, 0.1), S(100, 1, 0.1), "pass", "6.00%"),
    ("p99 tie", S(200, 0, 0.15), S(2000, 0, 0.10), "pass", "p99 0.150s vs 0.100s"),
    ("just past p99 tie", S(200, 0, 0.1501), S(2000, 0, 0.10), "fail", "p99_threshold"),
    ("all failing, no latency", S(200, 200, 0.0), S(2000, 0, 0.1), "fail", "100.00%"),
]


@pytest.mark.parametrize(
    ("canary", "stable", "expected", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_verdicts(canary: Sample, stable: Sample, expected: str, words: str) -> None:
    result = verdict(canary, stable)
    assert (result.verdict, result.canary, result.stable) == (expected, canary, stable)
    assert words in result.reason


def test_both_breaches_are_named() -> None:
    reason = verdict(S(200, 30, 0.2), S(2000, 20, 0.1)).reason
    assert "error_rate_threshold" in reason
    assert "p99_threshold" in reason


def test_zero_threshold_fails_any_excess_but_not_equal_rates() -> None:
    assert verdict(S(100, 2, 0.1), S(100, 1, 0.1), error_rate_threshold=0).verdict == "fail"
    assert verdict(S(100, 1, 0.1), S(100, 1, 0.1), error_rate_threshold=0).verdict == "pass"


def test_min_requests_is_configurable() -> None:
    assert verdict(S(10, 5, 0.1), S(100, 0, 0.1), min_requests=10).verdict == "fail"
    assert verdict(S(10, 0, 0.1), S(100, 0, 0.1), min_requests=11).verdict == "inconclusive"


# -- samples from the data plane's counters ---------------------------------------------


def counters(*latencies: float, statuses: tuple[int, ...] = (), **failures: int) -> TargetMetrics:
    metrics = TargetMetrics()
    for seconds in latencies:
        metrics.request()
        metrics.response(200, seconds)
    for status in statuses:
        metrics.request()
        metrics.response(status, 0.01)
    for kind, n in failures.items():
        for _ in range(n):
            metrics.request()
            if kind == "retried":
                metrics.retry()
            else:
                metrics.fail(kind)
    return metrics


def totals(*metrics: TargetMetrics) -> Counters:
    """A pool's totals over these targets' counters."""
    return sum_counters(m.snapshot() for m in metrics)


def test_from_pool_counts_5xx_failures_and_retried_tries_as_errors() -> None:
    m = counters(0.01, 0.02, statuses=(404, 500, 503), connect=2, retried=1, cancelled=1)
    pool = totals(m, counters(0.03))
    sample = Sample.from_pool(pool)
    # 3 ok + 3 statuses + 2 connect + 1 retried; the cancelled try has no verdict of its own
    assert (sample.requests, sample.errors) == (9, 5)
    assert sample.p99 == pool.latency.p99
    assert len(sample.buckets) == len(BUCKET_LABELS)


def test_from_pool_p99_is_the_data_planes_estimate() -> None:
    pool = totals(counters(*[0.004] * 90, *[0.3] * 10))
    assert Sample.from_pool(pool).p99 == pool.latency.p99


def test_from_pool_in_flight_tries_are_not_counted_yet() -> None:
    m = counters(0.01)
    m.request()  # sent, no answer yet
    assert Sample.from_pool(totals(m)).requests == 1


def test_from_pool_without_buckets_uses_the_reported_p99() -> None:
    # What a data plane without a histogram (HAProxy's `show stat`) would report.
    latency = Latency(count=3, sum=0.3, p50=0.1, p99=0.25, buckets={})
    pool = (
        TargetMetrics()
        .snapshot()
        .model_copy(update={"requests": 3, "responses": {"2xx": 3}, "latency": latency})
    )
    assert Sample.from_pool(pool) == Sample(3, 0, 0.25)


def stats_of(*, canary: Counters | None = None, stable: Counters | None = None) -> Stats:
    """Stats of service "web" with these pools' totals (None: the pool is not reported)."""
    empty = pool_entry({})
    pools: dict[PoolName, PoolStats] = {}
    named: tuple[tuple[PoolName, Counters | None], ...] = (("canary", canary), ("stable", stable))
    for name, counted in named:
        if counted is not None:
            pool_totals = empty.totals.model_copy(update=dict(counted))
            pools[name] = empty.model_copy(update={"totals": pool_totals})
    service = ServiceStats(pools=pools, canary_weight=10.0, panic=0)
    return Stats(services={"web": service}, connections=0, rejected={})


def test_pool_samples_are_canary_then_stable() -> None:
    canary, stable = totals(counters(statuses=(500,))), totals(counters(0.01, 0.01))
    got = pool_samples(stats_of(canary=canary, stable=stable), "web")
    assert got == (Sample.from_pool(canary), Sample.from_pool(stable))
    assert (got[0].errors, got[1].requests) == (1, 2)


def test_pool_samples_of_a_missing_pool_or_service_have_no_traffic() -> None:
    only_stable = stats_of(stable=totals(counters(0.01)))
    assert pool_samples(only_stable, "web")[0] is NO_TRAFFIC
    assert pool_samples(only_stable, "api") == (NO_TRAFFIC, NO_TRAFFIC)
    assert Sample(0, 0, 0.0) == NO_TRAFFIC


def test_sample_refuses_foreign_buckets() -> None:
    with pytest.raises(ValueError, match="buckets"):
        Sample(1, 0, 0.1, buckets=(1, 1))


# -- windows -----------------------------------------------------------------------------


def test_since_is_the_window_with_its_own_p99() -> None:
    m = counters(*[0.002] * 1000)
    before = Sample.from_pool(totals(m))
    for status in (200, 200, 200, 200, 502):
        m.request()
        m.response(status, 2.0)
    window = Sample.from_pool(totals(m)).since(before)
    assert (window.requests, window.errors) == (5, 1)
    only_window = Histogram()
    for _ in range(5):
        only_window.observe(2.0)
    assert window.p99 == pytest.approx(only_window.quantile(0.99))
    assert window.p99 > 1.0 > Sample.from_pool(totals(m)).p99  # history would hide it


def test_since_itself_is_empty() -> None:
    now = Sample.from_pool(totals(counters(0.01, statuses=(500,))))
    window = now.since(now)
    assert (window.requests, window.errors, window.p99) == (0, 0, 0.0)


def test_since_a_reset_takes_the_later_sample_whole() -> None:
    earlier = Sample.from_pool(totals(counters(*[0.01] * 10)))
    later = Sample.from_pool(totals(counters(0.5, 0.5)))  # a target left, counters restarted
    assert later.since(earlier) == later


def test_since_without_buckets_keeps_the_later_p99() -> None:
    assert Sample(300, 4, 0.2).since(Sample(100, 1, 0.1)) == Sample(200, 3, 0.2)


# -- statistics ----------------------------------------------------------------------------

TRIALS = 200


def drawn(rng: random.Random, n: int, error_rate: float, median: float) -> Sample:
    """n requests through real counters: Bernoulli errors, log-normal latency."""
    m = TargetMetrics()
    for _ in range(n):
        m.request()
        status = 500 if rng.random() < error_rate else 200
        m.response(status, rng.lognormvariate(math.log(median), 0.5))
    return Sample.from_pool(totals(m))


def verdicts(canary_errors: float, stable_errors: float, canary_median: float) -> list[str]:
    results: list[str] = []
    for seed in range(TRIALS):
        rng = random.Random(seed)
        # A 20 % canary step: 400 canary requests beside 1600 stable ones.
        canary = drawn(rng, 400, canary_errors, canary_median)
        stable = drawn(rng, 1600, stable_errors, 0.02)
        results.append(verdict(canary, stable).verdict)
    return results


def test_a_canary_failing_30_percent_is_caught_every_time() -> None:
    assert verdicts(0.30, 0.01, 0.02).count("fail") == TRIALS


def test_a_canary_three_times_slower_is_caught_every_time() -> None:
    assert verdicts(0.01, 0.01, 0.06).count("fail") == TRIALS


def test_a_canary_like_stable_passes() -> None:
    results = verdicts(0.01, 0.01, 0.02)
    assert results.count("pass") >= 0.95 * TRIALS
    assert "inconclusive" not in results
