"""Stats as Prometheus text: names, labels, types and values, read back as a scraper would."""

from __future__ import annotations

from counted import target
from prometheus_text import samples, value
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.proxy.metrics import target_entry
from zerodown.proxy.target import Target
from zerodown.routing import PoolName
from zerodown.stats import (
    BUCKET_LABELS,
    Latency,
    PoolStats,
    ServiceStats,
    Stats,
    pool_entry,
)

A, B = "127.0.0.1:9001", "127.0.0.1:9002"
FAMILIES = [
    ("zerodown_requests_total", "counter"),
    ("zerodown_responses_total", "counter"),
    ("zerodown_in_flight", "gauge"),
    ("zerodown_retries_total", "counter"),
    ("zerodown_ejections_total", "counter"),
    ("zerodown_upstream_failures_total", "counter"),
    ("zerodown_request_duration_seconds", "histogram"),
    ("zerodown_target_up", "gauge"),
    ("zerodown_canary_weight_percent", "gauge"),
    ("zerodown_panic_total", "counter"),
    ("zerodown_refused_total", "counter"),
    ("zerodown_cache_requests_total", "counter"),
    ("zerodown_rejected_total", "counter"),
    ("zerodown_client_connections", "gauge"),
]


def stats(*targets: Target, connections: int = 4, rejected: int = 2) -> Stats:
    pool = pool_entry({t.address: target_entry(t) for t in targets})
    pools: dict[PoolName, PoolStats] = {"stable": pool, "canary": pool_entry({})}
    service = ServiceStats(
        pools=pools, canary_weight=10.0, panic=pool.totals.panic, cache_hits=7, cache_misses=2
    )
    rejects = {"400": rejected} if rejected else {}
    return Stats(services={"web": service}, connections=connections, rejected=rejects)


def served(version: str | None = "v1") -> Target:
    t = target(A, version)
    assert t.metrics is not None
    for status, seconds in ((200, 0.05), (200, 0.05), (503, 0.5)):
        t.metrics.request()
        t.metrics.response(status, seconds)
    t.metrics.retry()
    t.metrics.fail("connect")
    t.in_flight = 1
    return t


LABELS = {"service": "web", "pool": "stable", "target": A, "version": "v1"}


def test_every_family_once_with_its_type_in_order() -> None:
    text = render_prometheus(stats(served()))
    types = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE")]
    assert types == [list(family) for family in FAMILIES]
    helps = [line for line in text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(FAMILIES)
    assert "# HELP zerodown_requests_total Tries sent to a target" in text


def test_target_samples() -> None:
    text = render_prometheus(stats(served()))
    assert value(text, "zerodown_requests_total", **LABELS) == 3
    assert value(text, "zerodown_responses_total", **LABELS, code="2xx") == 2
    assert value(text, "zerodown_responses_total", **LABELS, code="5xx") == 1
    assert value(text, "zerodown_in_flight", **LABELS) == 1
    assert value(text, "zerodown_retries_total", **LABELS) == 1
    assert value(text, "zerodown_ejections_total", **LABELS) == 0
    assert value(text, "zerodown_upstream_failures_total", **LABELS, kind="connect") == 1
    assert value(text, "zerodown_upstream_failures_total", **LABELS, kind="cancelled") == 0
    assert value(text, "zerodown_target_up", **LABELS) == 1


def test_latency_histogram() -> None:
    text = render_prometheus(stats(served()))
    family = "zerodown_request_duration_seconds"
    buckets = {le: value(text, f"{family}_bucket", **LABELS, le=le) for le in BUCKET_LABELS}
    assert (buckets["0.025"], buckets["0.05"], buckets["0.5"], buckets["+Inf"]) == (0, 2, 3, 3)
    assert value(text, f"{family}_count", **LABELS) == 3
    assert value(text, f"{family}_sum", **LABELS) == 0.6
    assert 'le="0.0025"' in text
    assert 'le="60.0"' in text


def test_service_and_proxy_samples() -> None:
    text = render_prometheus(stats(served()))
    assert value(text, "zerodown_canary_weight_percent", service="web") == 10.0
    assert value(text, "zerodown_panic_total", service="web") == 0
    assert value(text, "zerodown_refused_total", service="web", reason="rate_limited") == 0
    assert value(text, "zerodown_cache_requests_total", service="web", result="hit") == 7
    assert value(text, "zerodown_cache_requests_total", service="web", result="miss") == 2
    assert value(text, "zerodown_rejected_total", code="400") == 2
    assert value(text, "zerodown_client_connections") == 4


def test_no_targets_and_no_rejections_leave_their_families_out() -> None:
    text = render_prometheus(stats(rejected=0))
    names = {name for name, _ in samples(text)}
    assert names == {
        "zerodown_canary_weight_percent",
        "zerodown_panic_total",
        "zerodown_refused_total",
        "zerodown_cache_requests_total",
        "zerodown_client_connections",
    }
    empty = render_prometheus(Stats(services={}, connections=0, rejected={}))
    assert empty.splitlines()[-1] == "zerodown_client_connections 0.0"


def test_label_values_are_escaped() -> None:
    text = render_prometheus(stats(served(version='a"b\\c\nd')))
    assert 'version="a\\"b\\\\c\\nd"' in text
    assert value(text, "zerodown_requests_total", **{**LABELS, "version": 'a"b\\c\nd'}) == 3


def test_a_null_version_is_an_empty_label() -> None:
    text = render_prometheus(stats(served(version=None)))
    assert value(text, "zerodown_requests_total", **{**LABELS, "version": ""}) == 3


def test_two_targets_two_series_per_sample() -> None:
    text = render_prometheus(stats(target(A), target(B, "v2")))
    lines = text.splitlines()
    buckets = [line for line in lines if line.startswith("zerodown_request_duration_seconds_b")]
    assert len(buckets) == 2 * len(BUCKET_LABELS)
    assert value(text, "zerodown_requests_total", **{**LABELS, "target": B, "version": "v2"}) == 0


def test_a_target_without_a_histogram_has_no_duration_series() -> None:
    # A data plane that reports no buckets (HAProxy's `show stat`) still exports the rest.
    entry = target_entry(served())
    bare = entry.model_copy(update={"latency": Latency(count=3, sum=0.6, p50=0, p99=0, buckets={})})
    pool = PoolStats(totals=pool_entry({A: entry}).totals, targets={A: bare})
    service = ServiceStats(pools={"stable": pool}, canary_weight=0.0, panic=0)
    text = render_prometheus(Stats(services={"web": service}, connections=0, rejected={}))
    assert "zerodown_request_duration_seconds" not in text
    assert value(text, "zerodown_requests_total", **LABELS) == 3
