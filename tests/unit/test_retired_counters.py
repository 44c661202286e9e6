"""RetiredCounters: the last counters of dead worker generations, summed per target."""

from __future__ import annotations

from typing import Any

from zerodown.dataplane.counters import RetiredCounters, target_keys
from zerodown.proxy.metrics import TargetMetrics, merge_worker_stats, pool_entry

A, B = "127.0.0.1:9001", "127.0.0.1:9002"


def counters(requests: int, status: int = 200, in_flight: int = 0) -> dict[str, Any]:
    metrics = TargetMetrics()
    for _ in range(requests):
        metrics.request()
        metrics.response(status, 0.004)
    return {**metrics.snapshot(), "in_flight": in_flight, "available": True}


def worker(pool: str = "stable", rejected: int = 0, **by_address: int) -> dict[str, Any]:
    entries = {address: counters(n, in_flight=1) for address, n in by_address.items()}
    return {
        "services": {"web": {"pools": {pool: pool_entry(entries)}}},
        "connections": 3,
        "rejected": {"400": rejected} if rejected else {},
    }


def view(*addresses: str) -> dict[str, Any]:
    state = {"state": "ready", "health": "up", "serving": True, "available": True}
    entries = {a: {**counters(0), **state, "weight": 1, "version": None} for a in addresses}
    return {"services": {"web": {"pools": {"stable": pool_entry(entries)}}}}


def test_generations_add_up_per_target_with_nothing_in_flight() -> None:
    retired = RetiredCounters()
    retired.add(worker(rejected=2, **{A: 3, B: 1}))
    retired.add(worker(rejected=1, **{A: 4}))
    kept = retired.stats()
    targets = kept["services"]["web"]["pools"]["stable"]["targets"]
    assert {a: t["requests"] for a, t in targets.items()} == {A: 7, B: 1}
    assert targets[A]["responses"]["2xx"] == 7
    assert targets[A]["latency"]["count"] == 7
    assert {t["in_flight"] for t in targets.values()} == {0}
    assert (kept["connections"], kept["rejected"]) == (0, {"400": 3})
    assert repr(retired) == "<RetiredCounters targets=2 requests=8>"


def test_merged_with_a_live_worker_the_totals_include_the_dead() -> None:
    retired = RetiredCounters()
    retired.add(worker(**{A: 5}))
    merged = merge_worker_stats(view(A, B), [worker(**{A: 2, B: 1}), retired.stats()])
    totals = merged["services"]["web"]["pools"]["stable"]["totals"]
    assert (totals["requests"], totals["in_flight"]) == (8, 2)
    assert merged["connections"] == 3  # only the live worker's


def test_targets_that_left_the_table_are_forgotten() -> None:
    retired = RetiredCounters()
    retired.add(worker(**{A: 5, B: 2}))
    retired.keep_only(target_keys(view(B)))
    targets = retired.stats()["services"]["web"]["pools"]["stable"]["targets"]
    assert {a: t["requests"] for a, t in targets.items()} == {B: 2}
    assert target_keys(view(A, B)) == {("web", "stable", A), ("web", "stable", B)}
