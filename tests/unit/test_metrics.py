"""Metrics: counters, buckets, quantile estimates, merging, Prometheus text. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zerodown.proxy.metrics import (
    BUCKET_LABELS,
    FAILURE_KINDS,
    LATENCY_BUCKETS,
    Histogram,
    TargetMetrics,
    merge,
    pool_entry,
    render_prometheus,
    target_entry,
)
from zerodown.proxy.target import Target


def histogram(*values: float) -> Histogram:
    h = Histogram()
    for value in values:
        h.observe(value)
    return h


# --- TargetMetrics --------------------------------------------------------------


def test_counters_count() -> None:
    m = TargetMetrics()
    for _ in range(3):
        m.request()
    m.response(200, 0.01)
    m.response(204, 0.01)
    m.response(503, 0.2)
    m.retry()
    m.eject()
    m.fail("connect")
    m.fail("connect")
    m.fail("cancelled")
    snap = m.snapshot()
    assert snap["requests"] == 3
    assert snap["responses"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1}
    assert (snap["retries"], snap["ejections"]) == (1, 1)
    assert snap["failures"] == {k: {"connect": 2, "cancelled": 1}.get(k, 0) for k in FAILURE_KINDS}
    assert snap["latency"]["count"] == 3


def test_every_failure_kind_is_reported_from_the_start() -> None:
    assert TargetMetrics().snapshot()["failures"] == dict.fromkeys(FAILURE_KINDS, 0)


def test_unknown_failure_kind_is_counted_not_dropped() -> None:
    m = TargetMetrics()
    m.fail("tls")
    assert m.snapshot()["failures"]["tls"] == 1


@pytest.mark.parametrize(("status", "cls"), [(100, "1xx"), (599, "5xx"), (99, "1xx"), (999, "5xx")])
def test_status_outside_range_is_clamped_to_a_class(status: int, cls: str) -> None:
    m = TargetMetrics()
    m.response(status, 0.0)
    assert m.snapshot()["responses"][cls] == 1


def test_hot_path_objects_have_no_instance_dict() -> None:
    # __slots__ keeps per-target objects small and attribute access fast.
    assert not hasattr(TargetMetrics(), "__dict__")
    assert not hasattr(Histogram(), "__dict__")


def test_snapshot_is_strict_json() -> None:
    m = TargetMetrics()
    json.dumps(m.snapshot(), allow_nan=False)  # empty: quantiles must not be NaN
    m.response(200, 0.003)
    json.dumps(m.snapshot(), allow_nan=False)


# --- Histogram ------------------------------------------------------------------


def test_bucket_bounds_are_inclusive() -> None:
    # Prometheus `le` means less than or equal: 0.005 belongs to le="0.005".
    h = histogram(0.005, 0.0050001, 0.0)
    buckets = h.buckets()
    assert buckets["0.0025"] == 1  # the 0.0
    assert buckets["0.005"] == 2
    assert buckets["0.01"] == 3


def test_beyond_the_last_bound_goes_to_inf() -> None:
    h = histogram(61.0, 3600.0)
    assert h.buckets()["60.0"] == 0
    assert h.buckets()["+Inf"] == 2


def test_buckets_are_cumulative_and_labelled() -> None:
    h = histogram(0.0005, 0.02, 0.02, 0.7)
    assert list(h.buckets()) == list(BUCKET_LABELS)
    assert len(BUCKET_LABELS) == len(LATENCY_BUCKETS) + 1
    assert h.cumulative() == sorted(h.cumulative())
    assert h.buckets()["0.001"] == 1
    assert h.buckets()["0.025"] == 3
    assert h.buckets()["+Inf"] == h.count == 4
    assert h.sum == pytest.approx(0.7405)


def test_quantile_interpolates_within_a_bucket() -> None:
    # 100 values in (0.01, 0.025]: p50 sits halfway through that bucket.
    h = histogram(*[0.02] * 100)
    assert h.quantile(0.5) == pytest.approx(0.0175)
    assert h.quantile(1.0) == pytest.approx(0.025)


def test_quantile_on_two_clusters() -> None:
    h = histogram(*[0.003] * 50, *[0.2] * 50)
    # rank 50 closes the (0.0025, 0.005] bucket
    assert h.quantile(0.5) == pytest.approx(0.005)
    # rank 99: 49 of the 50 in (0.1, 0.25]
    assert h.quantile(0.99) == pytest.approx(0.1 + 0.15 * 49 / 50)
    # rank 0 is the bottom of the first non-empty bucket
    assert h.quantile(0.0) == pytest.approx(0.0025)


def test_quantile_first_bucket_starts_at_zero() -> None:
    assert histogram(0.0005, 0.0005).quantile(0.5) == pytest.approx(0.0005)


def test_quantile_in_inf_bucket_is_the_top_bound() -> None:
    assert histogram(100.0).quantile(0.99) == LATENCY_BUCKETS[-1]


def test_quantile_of_nothing_is_zero() -> None:
    assert Histogram().quantile(0.99) == 0.0


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_quantile_outside_0_1_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Histogram().quantile(q)


def test_snapshot_carries_p50_and_p99() -> None:
    snap = histogram(*[0.02] * 100).snapshot()
    assert snap["p50"] == pytest.approx(0.0175)
    assert snap["p99"] == pytest.approx(0.01 + 0.015 * 0.99)


# --- merge ----------------------------------------------------------------------


def metrics(statuses: list[int], seconds: float) -> TargetMetrics:
    m = TargetMetrics()
    for status in statuses:
        m.request()
        m.response(status, seconds)
    return m


def test_merge_sums_counters_and_histograms() -> None:
    a, b = metrics([200, 200, 500], 0.003), metrics([200, 404], 0.2)
    a.retry()
    b.fail("timeout")
    b.fail("tls")
    total = merge([a.snapshot(), b.snapshot()])
    assert total["requests"] == 5
    assert total["responses"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
    assert total["retries"] == 1
    assert total["failures"]["timeout"] == 1
    assert total["failures"]["tls"] == 1
    assert total["latency"]["count"] == 5
    assert total["latency"]["sum"] == pytest.approx(3 * 0.003 + 2 * 0.2)
    assert total["latency"]["buckets"]["0.005"] == 3
    assert total["latency"]["buckets"]["+Inf"] == 5


def test_merge_reestimates_quantiles_from_merged_buckets() -> None:
    fast, slow = metrics([200] * 50, 0.003), metrics([200] * 50, 0.2)
    whole = TargetMetrics()
    for m in (fast, slow):
        whole.absorb(m.snapshot())
    total = merge([fast.snapshot(), slow.snapshot()])
    assert total == whole.snapshot()
    assert total["latency"]["p99"] == pytest.approx(0.1 + 0.15 * 49 / 50)


def test_merge_of_nothing_is_zeros() -> None:
    assert merge([]) == TargetMetrics().snapshot()


def test_merge_roundtrips_one_snapshot() -> None:
    m = metrics([200, 301, 502], 0.04)
    m.fail("reset")
    assert merge([m.snapshot()]) == m.snapshot()


# --- stats shape ----------------------------------------------------------------


def target(address: str, version: str | None = "v1", weight: int = 1) -> Target:
    t = Target(address, weight=weight, version=version)
    t.set_state("ready")
    t.metrics = TargetMetrics()
    return t


def test_target_entry_has_state_and_counters() -> None:
    t = target("127.0.0.1:9001")
    t.in_flight = 2
    assert t.metrics is not None
    t.metrics.request()
    t.metrics.response(200, 0.01)
    entry = target_entry(t)
    assert entry["state"] == "ready"
    assert entry["health"] == "up"
    assert entry["serving"] is True
    assert entry["available"] is True
    assert (entry["weight"], entry["version"], entry["in_flight"]) == (1, "v1", 2)
    assert entry["requests"] == 1
    assert entry["responses"]["2xx"] == 1
    json.dumps(entry, allow_nan=False)


def test_target_entry_without_metrics_reports_zeros() -> None:
    t = Target("127.0.0.1:9001")
    entry = target_entry(t)
    assert entry["state"] == "adding"
    assert entry["available"] is False
    assert entry["requests"] == 0


def test_target_entry_takes_explicit_metrics() -> None:
    t = Target("127.0.0.1:9001")
    assert target_entry(t, metrics([200], 0.01))["requests"] == 1


def test_pool_entry_totals() -> None:
    a, b = target("127.0.0.1:9001"), target("127.0.0.1:9002", weight=0)
    a.in_flight, b.in_flight = 1, 2
    for t, status in ((a, 200), (b, 502)):
        assert t.metrics is not None
        t.metrics.request()
        t.metrics.response(status, 0.01)
    pool = pool_entry({t.address: target_entry(t) for t in (a, b)})
    assert set(pool) == {"totals", "targets"}
    assert list(pool["targets"]) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    totals = pool["totals"]
    assert totals["requests"] == 2
    assert totals["responses"]["5xx"] == 1
    assert (totals["in_flight"], totals["targets"], totals["available"]) == (3, 2, 1)
    json.dumps(pool, allow_nan=False)


def test_empty_pool_entry() -> None:
    pool = pool_entry({})
    assert pool["targets"] == {}
    assert pool["totals"]["targets"] == 0
    assert pool["totals"]["requests"] == 0


# --- Prometheus -----------------------------------------------------------------


def small_stats(version: str = "v1") -> dict[str, Any]:
    """A hand-written stats document with two buckets, so the text fits in a test."""
    entry = {
        "state": "ready",
        "serving": True,
        "version": version,
        "in_flight": 1,
        "requests": 3,
        "responses": {"2xx": 2, "5xx": 1},
        "retries": 1,
        "ejections": 0,
        "failures": {"connect": 1},
        "latency": {"count": 3, "sum": 0.5, "buckets": {"0.1": 2, "+Inf": 3}},
    }
    pools = {"stable": {"totals": {}, "targets": {"127.0.0.1:9001": entry}}}
    return {
        "services": {"web": {"pools": pools, "canary_weight": 10.0}},
        "connections": 4,
        "rejected": {"400": 2},
    }


LABELS = 'service="web",pool="stable",target="127.0.0.1:9001",version="v1"'
EXPECTED = f"""\
# HELP zerodown_requests_total Tries sent to a target (a retried request counts per try).
# TYPE zerodown_requests_total counter
zerodown_requests_total{{{LABELS}}} 3
# HELP zerodown_responses_total Responses from a target by status class.
# TYPE zerodown_responses_total counter
zerodown_responses_total{{{LABELS},code="2xx"}} 2
zerodown_responses_total{{{LABELS},code="5xx"}} 1
# HELP zerodown_in_flight Requests a target is working on now.
# TYPE zerodown_in_flight gauge
zerodown_in_flight{{{LABELS}}} 1
# HELP zerodown_retries_total Tries that failed on a target and were retried elsewhere.
# TYPE zerodown_retries_total counter
zerodown_retries_total{{{LABELS}}} 1
# HELP zerodown_ejections_total Passive-health ejections of a target.
# TYPE zerodown_ejections_total counter
zerodown_ejections_total{{{LABELS}}} 0
# HELP zerodown_upstream_failures_total Tries that failed on a target, by kind.
# TYPE zerodown_upstream_failures_total counter
zerodown_upstream_failures_total{{{LABELS},kind="connect"}} 1
# HELP zerodown_request_duration_seconds Time from sending a try to its response.
# TYPE zerodown_request_duration_seconds histogram
zerodown_request_duration_seconds_bucket{{{LABELS},le="0.1"}} 2
zerodown_request_duration_seconds_bucket{{{LABELS},le="+Inf"}} 3
zerodown_request_duration_seconds_sum{{{LABELS}}} 0.5
zerodown_request_duration_seconds_count{{{LABELS}}} 3
# HELP zerodown_target_up 1 when health lets the target serve, else 0.
# TYPE zerodown_target_up gauge
zerodown_target_up{{{LABELS}}} 1
# HELP zerodown_canary_weight_percent Share of a service's traffic sent to canary.
# TYPE zerodown_canary_weight_percent gauge
zerodown_canary_weight_percent{{service="web"}} 10.0
# HELP zerodown_rejected_total Requests the proxy answered itself, by status.
# TYPE zerodown_rejected_total counter
zerodown_rejected_total{{code="400"}} 2
# HELP zerodown_client_connections Open client connections.
# TYPE zerodown_client_connections gauge
zerodown_client_connections 4
"""


def test_prometheus_text_exactly() -> None:
    assert render_prometheus(small_stats()) == EXPECTED


def test_prometheus_of_nothing_is_empty() -> None:
    assert render_prometheus({"services": {}, "rejected": {}}) == ""


def test_prometheus_escapes_label_values() -> None:
    text = render_prometheus(small_stats(version='a"b\\c\nd'))
    assert 'version="a\\"b\\\\c\\nd"' in text
    # the newline is escaped, so no sample spills onto an extra line
    assert len(text.splitlines()) == len(EXPECTED.splitlines())


def test_prometheus_null_version_is_an_empty_label() -> None:
    stats = small_stats()
    stats["services"]["web"]["pools"]["stable"]["targets"]["127.0.0.1:9001"]["version"] = None
    assert 'version=""' in render_prometheus(stats)


def test_prometheus_help_and_type_once_per_family() -> None:
    a, b = target("127.0.0.1:9001"), target("127.0.0.1:9002", version="v2")
    entries = {t.address: target_entry(t) for t in (a, b)}
    stats = {"services": {"web": {"pools": {"stable": pool_entry(entries)}}}, "rejected": {}}
    lines = render_prometheus(stats).splitlines()
    types = [line for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types)) == 8
    assert len([line for line in lines if line.startswith("# HELP")]) == 8
    buckets = [
        line for line in lines if line.startswith("zerodown_request_duration_seconds_bucket")
    ]
    assert len(buckets) == 2 * len(BUCKET_LABELS)


def test_prometheus_from_real_entries_is_parseable() -> None:
    # Every sample line is `name{labels} value` with a float-parseable value.
    t = target("127.0.0.1:9001")
    assert t.metrics is not None
    t.metrics.response(200, 0.012)
    stats = {"services": {"web": {"pools": {"stable": pool_entry({t.address: target_entry(t)})}}}}
    text = render_prometheus(stats)
    for line in text.splitlines():
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    assert 'le="0.025"} 1\n' in text
    assert 'le="0.01"} 0\n' in text
