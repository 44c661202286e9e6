"""The canary judge: samples from pool totals, windows, verdicts. Pure; the
formulas themselves and the judge's error rates over many seeded canaries
are in test_canary_statistics.py."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from zerodown.analysis import NO_TRAFFIC, Criteria, Judgement, Sample, judge, pool_samples
from zerodown.config import defaults, parse_config
from zerodown.config.strategy import CanaryConfig
from zerodown.deploy.views import read_detail, verdict_detail
from zerodown.errors import ConfigError
from zerodown.proxy.metrics import Histogram, TargetMetrics
from zerodown.routing import PoolName
from zerodown.stats import (
    BUCKET_LABELS,
    LATENCY_BUCKETS,
    Counters,
    Latency,
    PoolStats,
    ServiceStats,
    Stats,
    pool_entry,
    sum_counters,
)

DEFAULTS = CanaryConfig().criteria()


def verdict(canary: Sample, stable: Sample, **overrides: Any) -> Judgement:
    """The judge's verdict with the default criteria, `overrides` replacing some."""
    return judge(canary, stable, replace(DEFAULTS, **overrides))


def test_the_defaults_are_the_documented_ones() -> None:
    assert Criteria(0.95, 0.01, 0.1, 0.005, 100) == DEFAULTS
    assert DEFAULTS.min_requests == defaults.MIN_REQUESTS


def timed(n: int, errors: int, *latencies: float) -> Sample:
    """n requests, `errors` of them failing, latencies cycled from `latencies`."""
    counts = [0] * len(BUCKET_LABELS)
    for i in range(n):
        seconds = latencies[i % len(latencies)]
        counts[next((k for k, b in enumerate(LATENCY_BUCKETS) if seconds <= b), -1)] += 1
    cumulative = tuple(sum(counts[: k + 1]) for k in range(len(counts)))
    return Sample(n, errors, 0.0, cumulative)


# -- verdicts --------------------------------------------------------------------------

S = Sample
CASES = [
    # name, canary, stable, verdict, words the reason must contain
    ("alike", S(2000, 20, 0.1), S(18000, 180, 0.1), "pass", "+0.00 points (at most +0.45"),
    ("clean canary", S(500, 0, 0.05), S(4500, 45, 0.08), "pass", "0.00% (0/500)"),
    ("errors", S(200, 30, 0.1), S(2000, 20, 0.1), "fail", "error rate 15.00% (30/200)"),
    ("few requests", S(99, 0, 0.1), S(2000, 20, 0.1), "inconclusive", "99 canary requests"),
    ("few, all failing", S(99, 99, 9.0), S(2000, 0, 0.1), "inconclusive", "100 needed"),
    ("no canary traffic", S(0, 0, 0.0), S(2000, 0, 0.1), "inconclusive", "0 canary requests"),
    # 0 errors in 100 still allows 2.6 %: an increase of 1 point is not ruled out
    ("clean but small", S(100, 0, 0.1), S(900, 0, 0.1), "inconclusive", "more requests needed"),
    ("worse, not yet significant", S(100, 2, 0.1), S(900, 9, 0.1), "inconclusive", "+1.00"),
    # significant, but smaller than the increase that matters
    ("small increase", S(200_000, 3000, 0.1), S(1_800_000, 18000, 0.1), "pass", "+0.50 points"),
    # no stable traffic: a known 0 % baseline
    ("stable idle, canary ok", S(400, 0, 0.5), NO_TRAFFIC, "pass", "latency not compared"),
    ("stable idle, canary failing", S(200, 20, 0.5), NO_TRAFFIC, "fail", "10.00% (20/200)"),
    # stable failing too: only the difference counts
    ("both failing alike", S(20000, 6400, 0.1), S(200_000, 64000, 0.1), "pass", "32.00%"),
    ("canary worse than failing stable", S(2000, 720, 0.1), S(20000, 6000, 0.1), "fail", "36.00%"),
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


def test_a_fail_needs_significance_and_the_minimum_effect() -> None:
    result = verdict(S(2000, 720, 0.1), S(20000, 6000, 0.1))
    assert result.errors is not None
    assert result.errors.increase == pytest.approx(0.06)
    assert result.errors.low > 0  # significant at this look's level...
    assert result.alpha == pytest.approx(0.05 / 2 / 2**5)  # 2000 = 100 * 2^4.3: the fifth look
    # ...and at least the increase that matters. When 10 points matter, 6
    # (at most 7.1 here) are ruled out: the same data passes.
    lenient = verdict(S(2000, 720, 0.1), S(20000, 6000, 0.1), min_error_increase=0.1)
    assert lenient.verdict == "pass"


def test_a_millisecond_on_a_two_millisecond_service_passes() -> None:
    result = verdict(timed(2000, 0, 0.003), timed(18000, 0, 0.002))
    assert result.verdict == "pass", result.reason
    assert result.latency is not None
    assert result.latency.shift == pytest.approx(0.002)  # bucket-interpolated medians
    assert result.latency.p_value < 1e-9  # certainly slower, by nothing that matters
    assert result.latency.matters == 0.005
    assert "under the 5.0 ms that matters" in result.reason


def test_a_canary_slower_by_what_matters_fails() -> None:
    stable = timed(9000, 0, 0.03, 0.04, 0.06, 0.08)
    result = verdict(timed(1000, 0, 0.06, 0.08, 0.09, 0.2), stable)
    assert result.verdict == "fail", result.reason
    assert result.latency is not None
    assert result.latency.shift >= result.latency.matters
    assert result.reason.startswith("p50 ")
    assert "Mann-Whitney p = " in result.reason
    assert "error rate" not in result.reason  # a fail names what failed only


def test_the_latency_that_matters_is_relative_above_the_absolute_floor() -> None:
    stable = timed(9000, 0, 0.3, 0.4, 0.6, 0.8)  # a slow service: p50 ~0.4 s
    result = verdict(timed(1000, 0, 0.3, 0.4, 0.6, 0.8), stable)
    assert result.latency is not None
    assert result.latency.matters == pytest.approx(0.1 * result.latency.stable_p50)
    assert result.verdict == "pass"


def test_min_requests_is_a_floor() -> None:
    assert verdict(S(10, 5, 0.1), S(100, 0, 0.1), min_requests=10).verdict == "fail"
    assert verdict(S(10, 0, 0.1), S(100, 0, 0.1), min_requests=11).verdict == "inconclusive"


def test_numbers_are_json_with_every_check() -> None:
    numbers = verdict(timed(2000, 20, 0.05), timed(18000, 180, 0.05)).numbers()
    assert json.loads(json.dumps(numbers)) == numbers
    assert set(numbers) == {
        "verdict",
        "reason",
        "confidence",
        "alpha",
        "canary",
        "stable",
        "errors",
        "latency",
    }
    assert numbers["canary"] == {"requests": 2000, "errors": 20, "error_rate": 0.01, "p99": 0.0}
    errors = numbers["errors"]
    assert isinstance(errors, dict)
    assert (errors["verdict"], errors["increase"], errors["matters"]) == ("pass", 0.0, 0.01)
    assert set(errors) == {"verdict", "increase", "low", "high", "matters"}
    assert verdict(S(99, 0, 0.1), S(99, 0, 0.1)).numbers()["errors"] is None


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


# -- the verdict in the deploy view ------------------------------------------------------


def test_every_verdict_reads_back_as_the_deploy_views_model() -> None:
    judgements = [
        verdict(timed(2000, 20, 0.05), timed(18000, 180, 0.05)),  # both checks
        verdict(S(400, 0, 0.5), NO_TRAFFIC),  # no latency
        verdict(S(9, 0, 0.1), S(99, 0, 0.1)),  # no checks at all
    ]
    for judgement in judgements:
        numbers = judgement.numbers()
        message, view = read_detail(verdict_detail("deploy failed", numbers))
        assert message == "deploy failed"
        assert view is not None
        assert view.model_dump(mode="json") == numbers
        assert read_detail(verdict_detail("", numbers))[0] == judgement.reason


def test_a_detail_without_a_verdict_is_the_plain_message() -> None:
    assert verdict_detail("not healthy within 2s", None) == "not healthy within 2s"
    assert read_detail("not healthy within 2s") == ("not healthy within 2s", None)
    assert read_detail('{"json": "from an app"}') == ('{"json": "from an app"}', None)


# -- the canary keys -----------------------------------------------------------------------


def canary_problems(table: str) -> list[str]:
    text = f"[services.web]\ncommand = 'app'\ncanary = {table}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="zerodown.toml")
    return str(caught.value).splitlines()


def canary_of(table: str) -> Criteria:
    config = parse_config(f"[services.web]\ncommand = 'app'\ncanary = {table}\n")
    return config.services["web"].canary.criteria()


def test_the_canary_keys_reach_the_judge() -> None:
    table = (
        "{ confidence = 0.99, min_error_increase = 0.02, min_latency_increase = 0.25, "
        'min_latency_shift = "20ms", min_requests = 500 }'
    )
    assert canary_of(table) == Criteria(0.99, 0.02, 0.25, 0.02, 500)


def test_the_old_threshold_keys_still_load_as_their_new_names() -> None:
    old = canary_of("{ error_rate_threshold = 0.05, p99_threshold = 1.5 }")
    assert (old.min_error_increase, old.min_latency_increase) == (0.05, 0.5)
    (line,) = canary_problems("{ error_rate_threshold = 0.05, min_error_increase = 0.02 }")
    assert line == (
        "zerodown.toml: services.web.canary.error_rate_threshold: "
        "error_rate_threshold is the old name of min_error_increase: give only min_error_increase"
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("{ confidence = 1.0 }", "confidence"),
        ("{ confidence = 0.5 }", "confidence"),
        ("{ min_error_increase = 0 }", "min_error_increase"),
        ("{ min_error_increase = 1.5 }", "min_error_increase"),
        ("{ min_latency_increase = -0.1 }", "min_latency_increase"),
        ('{ min_latency_shift = "0s" }', "min_latency_shift"),
        ('{ min_latency_shift = "soon" }', "min_latency_shift"),
        ("{ min_requests = 0 }", "min_requests"),
    ],
)
def test_bad_canary_values_are_refused_by_key(table: str, key: str) -> None:
    (line,) = canary_problems(table)
    assert line.startswith(f"zerodown.toml: services.web.canary.{key}: "), line
