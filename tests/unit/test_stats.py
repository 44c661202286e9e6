"""The typed stats every data plane reports: sums, pool totals, the JSON they travel as. Pure."""

from __future__ import annotations

import json

import pytest

from counted import metrics, target
from zerodown.proxy.metrics import TargetMetrics, target_entry
from zerodown.routing import PoolName
from zerodown.stats import (
    BUCKET_LABELS,
    Counters,
    PoolStats,
    ServiceStats,
    Stats,
    pool_entry,
    quantile,
    sum_counters,
)

A, B = "127.0.0.1:9001", "127.0.0.1:9002"


# --- sum_counters ---------------------------------------------------------------


def test_sum_adds_counters_and_histograms() -> None:
    a, b = metrics([200, 200, 500], 0.003), metrics([200, 404], 0.2)
    a.retry()
    b.fail("timeout")
    b.fail("tls")
    b.panic()
    total = sum_counters([a.snapshot(), b.snapshot()])
    assert total.requests == 5
    assert total.responses == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
    assert (total.retries, total.panic) == (1, 1)
    assert total.failures["timeout"] == 1
    assert total.failures["tls"] == 1
    assert total.latency.count == 5
    assert total.latency.sum == pytest.approx(3 * 0.003 + 2 * 0.2)
    assert total.latency.buckets["0.005"] == 3
    assert total.latency.buckets["+Inf"] == 5


def test_sum_reestimates_quantiles_from_summed_buckets() -> None:
    fast, slow = metrics([200] * 50, 0.003), metrics([200] * 50, 0.2)
    whole = metrics([200] * 50, 0.003)
    for _ in range(50):
        whole.request()
        whole.response(200, 0.2)
    total = sum_counters([fast.snapshot(), slow.snapshot()])
    assert total == whole.snapshot()
    assert total.latency.p99 == pytest.approx(0.1 + 0.15 * 49 / 50)


def test_sum_of_nothing_is_zeros() -> None:
    assert sum_counters([]) == TargetMetrics().snapshot()


def test_sum_roundtrips_one_snapshot() -> None:
    m = metrics([200, 301, 502], 0.04)
    m.fail("reset")
    assert sum_counters([m.snapshot()]) == m.snapshot()


def test_sum_takes_target_entries_as_counters() -> None:
    t = target(A)
    t.metrics = metrics([200, 200], 0.01)
    t.in_flight = 4
    total = sum_counters([target_entry(t)])
    assert type(total) is Counters
    assert total == t.metrics.snapshot()


def test_quantile_of_per_bucket_counts() -> None:
    counts = [0] * len(BUCKET_LABELS)
    counts[4] = 100  # (0.01, 0.025]
    assert quantile(counts, 0.5) == pytest.approx(0.0175)
    assert quantile([0] * len(BUCKET_LABELS), 0.99) == 0.0


# --- pool_entry -----------------------------------------------------------------


def test_pool_entry_totals() -> None:
    a, b = target(A), target(B, weight=0)
    a.in_flight, b.in_flight = 1, 2
    for t, status in ((a, 200), (b, 502)):
        assert t.metrics is not None
        t.metrics.request()
        t.metrics.response(status, 0.01)
    pool = pool_entry({t.address: target_entry(t) for t in (a, b)})
    assert list(pool.targets) == [A, B]
    totals = pool.totals
    assert totals.requests == 2
    assert totals.responses["5xx"] == 1
    assert (totals.in_flight, totals.targets, totals.available) == (3, 2, 1)


def test_empty_pool_entry() -> None:
    pool = pool_entry({})
    assert pool.targets == {}
    assert pool.totals.targets == 0
    assert pool.totals.requests == 0


# --- the JSON -------------------------------------------------------------------


def stats(workers: int | None = None) -> Stats:
    t = target(A, version=None)
    t.metrics = metrics([200, 503], 0.0123)
    t.metrics.fail("tls")
    pools: dict[PoolName, PoolStats] = {
        "stable": pool_entry({A: target_entry(t)}),
        "canary": pool_entry({}),
    }
    service = ServiceStats(pools=pools, canary_weight=12.5, panic=0)
    return Stats(services={"web": service}, connections=2, rejected={"400": 1}, workers=workers)


def test_the_json_has_every_key_in_its_order() -> None:
    document = json.loads(stats().model_dump_json())
    assert list(document) == ["services", "connections", "rejected"]  # no "workers" unless known
    service = document["services"]["web"]
    assert list(service) == [
        *("pools", "canary_weight", "panic", "denied", "blocked", "rate_limited"),
        *("cache_hits", "cache_misses"),
    ]
    counters = ["requests", "responses", "retries", "ejections", "panic", "failures", "latency"]
    pool = service["pools"]["stable"]
    assert list(pool) == ["totals", "targets"]
    assert list(pool["totals"]) == [*counters, "in_flight", "targets", "available"]
    facts = ["state", "health", "serving", "available", "weight", "version", "in_flight"]
    assert list(pool["targets"][A]) == [*facts, *counters]
    assert pool["targets"][A]["version"] is None
    assert list(pool["targets"][A]["latency"]) == ["count", "sum", "p50", "p99", "buckets"]
    assert list(pool["targets"][A]["latency"]["buckets"]) == list(BUCKET_LABELS)
    assert json.loads(stats(workers=2).model_dump_json())["workers"] == 2


def test_stats_cross_a_process_as_json_without_loss() -> None:
    # What worker → supervisor and host → controller do (channel.py: json.dumps).
    for sent in (stats(), stats(workers=3)):
        line = json.dumps(sent.model_dump(mode="json"), allow_nan=False)
        assert Stats.model_validate(json.loads(line)) == sent


def test_a_document_of_the_wrong_shape_is_refused() -> None:
    document = stats().model_dump(mode="json")
    document["services"]["web"]["pools"]["blue"] = document["services"]["web"]["pools"]["stable"]
    with pytest.raises(ValueError, match="blue"):
        Stats.model_validate(document)
    assert PoolStats.model_validate(document["services"]["web"]["pools"]["stable"]).totals.requests
