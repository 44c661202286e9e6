"""The hot-path counters: TargetMetrics and Histogram, and their snapshots. Pure."""

from __future__ import annotations

import json

import pytest

from counted import metrics, target
from zerodown.proxy.metrics import Histogram, TargetMetrics, target_entry
from zerodown.proxy.target import Target
from zerodown.stats import BUCKET_LABELS, FAILURE_KINDS, LATENCY_BUCKETS


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
    m.panic()
    snap = m.snapshot()
    assert snap.requests == 3
    assert snap.responses == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1}
    assert (snap.retries, snap.ejections, snap.panic) == (1, 1, 1)
    assert snap.failures == {k: {"connect": 2, "cancelled": 1}.get(k, 0) for k in FAILURE_KINDS}
    assert snap.latency.count == 3


def test_every_failure_kind_is_reported_from_the_start() -> None:
    assert TargetMetrics().snapshot().failures == dict.fromkeys(FAILURE_KINDS, 0)


def test_unknown_failure_kind_is_counted_not_dropped() -> None:
    m = TargetMetrics()
    m.fail("tls")
    assert m.snapshot().failures["tls"] == 1


@pytest.mark.parametrize(("status", "cls"), [(100, "1xx"), (599, "5xx"), (99, "1xx"), (999, "5xx")])
def test_status_outside_range_is_clamped_to_a_class(status: int, cls: str) -> None:
    m = TargetMetrics()
    m.response(status, 0.0)
    assert m.snapshot().responses[cls] == 1  # type: ignore[index]


def test_hot_path_objects_have_no_instance_dict() -> None:
    # __slots__ keeps per-target objects small and attribute access fast.
    assert not hasattr(TargetMetrics(), "__dict__")
    assert not hasattr(Histogram(), "__dict__")


def test_snapshot_is_strict_json() -> None:
    m = TargetMetrics()
    json.loads(m.snapshot().model_dump_json())  # empty: quantiles must not be NaN
    json.dumps(m.snapshot().model_dump(mode="json"), allow_nan=False)
    m.response(200, 0.003)
    json.dumps(m.snapshot().model_dump(mode="json"), allow_nan=False)


# --- Histogram ------------------------------------------------------------------


def test_bucket_bounds_are_inclusive() -> None:
    # Prometheus `le` means less than or equal: 0.005 belongs to le="0.005".
    h = histogram(0.005, 0.0050001, 0.0)
    buckets = h.snapshot().buckets
    assert buckets["0.0025"] == 1  # the 0.0
    assert buckets["0.005"] == 2
    assert buckets["0.01"] == 3


def test_beyond_the_last_bound_goes_to_inf() -> None:
    h = histogram(61.0, 3600.0)
    assert h.snapshot().buckets["60.0"] == 0
    assert h.snapshot().buckets["+Inf"] == 2


def test_buckets_are_cumulative_and_labelled() -> None:
    h = histogram(0.0005, 0.02, 0.02, 0.7)
    assert list(h.snapshot().buckets) == list(BUCKET_LABELS)
    assert len(BUCKET_LABELS) == len(LATENCY_BUCKETS) + 1
    cumulative = list(h.snapshot().buckets.values())
    assert cumulative == sorted(cumulative)
    assert h.snapshot().buckets["0.001"] == 1
    assert h.snapshot().buckets["0.025"] == 3
    assert h.snapshot().buckets["+Inf"] == h.count == 4
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
    assert snap.p50 == pytest.approx(0.0175)
    assert snap.p99 == pytest.approx(0.01 + 0.015 * 0.99)


# --- target_entry ---------------------------------------------------------------


def test_target_entry_has_state_and_counters() -> None:
    t = target("127.0.0.1:9001")
    t.in_flight = 2
    assert t.metrics is not None
    t.metrics.request()
    t.metrics.response(200, 0.01)
    entry = target_entry(t)
    assert entry.state == "ready"
    assert entry.health == "up"
    assert entry.serving is True
    assert entry.available is True
    assert (entry.weight, entry.version, entry.in_flight) == (1, "v1", 2)
    assert entry.requests == 1
    assert entry.responses["2xx"] == 1
    assert entry.counters() == t.metrics.snapshot()


def test_target_entry_without_metrics_reports_zeros() -> None:
    t = Target("127.0.0.1:9001")
    entry = target_entry(t)
    assert entry.state == "adding"
    assert entry.available is False
    assert entry.counters() == TargetMetrics().snapshot()


def test_target_entry_takes_explicit_metrics() -> None:
    t = Target("127.0.0.1:9001")
    assert target_entry(t, metrics([200], 0.01)).requests == 1
