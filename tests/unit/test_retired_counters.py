"""RetiredCounters: the last counters of dead worker generations, summed per target."""

from __future__ import annotations

from zerodown.dataplane.counters import RetiredCounters
from zerodown.dataplane.merge import Tally, merge_worker_stats, target_keys
from zerodown.proxy.metrics import TargetMetrics, target_entry
from zerodown.proxy.target import Target
from zerodown.stats import ServiceStats, Stats, TargetStats, pool_entry

A, B = "127.0.0.1:9001", "127.0.0.1:9002"


def entry(address: str, requests: int = 0, in_flight: int = 0) -> TargetStats:
    target = Target(address)
    target.set_state("ready")
    target.in_flight = in_flight
    target.metrics = TargetMetrics()
    for _ in range(requests):
        target.metrics.request()
        target.metrics.response(200, 0.004)
    return target_entry(target)


def stats(targets: dict[str, TargetStats], *, connections: int = 0, rejected: int = 0) -> Stats:
    service = ServiceStats(pools={"stable": pool_entry(targets)}, canary_weight=0.0, panic=0)
    rejects = {"400": rejected} if rejected else {}
    return Stats(services={"web": service}, connections=connections, rejected=rejects)


def worker(rejected: int = 0, **requests: int) -> Tally:
    """A worker's tally: these requests per address, one in flight at each."""
    targets = {address: entry(address, n, in_flight=1) for address, n in requests.items()}
    return Tally.of(stats(targets, connections=3, rejected=rejected))


def view(*addresses: str) -> Stats:
    return stats({address: entry(address) for address in addresses})


def test_generations_add_up_per_target_with_nothing_in_flight() -> None:
    retired = RetiredCounters()
    retired.add(worker(rejected=2, **{A: 3, B: 1}))
    retired.add(worker(rejected=1, **{A: 4}))
    kept = retired.tally()
    targets = {address: c for (_, _, address), c in kept.counters.items()}
    assert {a: c.requests for a, c in targets.items()} == {A: 7, B: 1}
    assert targets[A].responses["2xx"] == 7
    assert targets[A].latency.count == 7
    assert dict(kept.in_flight) == {}
    assert (kept.connections, dict(kept.rejected)) == (0, {"400": 3})
    assert repr(retired) == "<RetiredCounters targets=2 requests=8>"


def test_merged_with_a_live_worker_the_totals_include_the_dead() -> None:
    retired = RetiredCounters()
    retired.add(worker(**{A: 5}))
    merged = merge_worker_stats(view(A, B), [worker(**{A: 2, B: 1}), retired.tally()])
    totals = merged.services["web"].pools["stable"].totals
    assert (totals.requests, totals.in_flight) == (8, 2)
    assert merged.connections == 3  # only the live worker's


def test_targets_that_left_the_table_are_forgotten() -> None:
    retired = RetiredCounters()
    retired.add(worker(**{A: 5, B: 2}))
    retired.keep_only(target_keys(view(B)))
    kept = retired.tally().counters
    assert {address: c.requests for (_, _, address), c in kept.items()} == {B: 2}
    assert target_keys(view(A, B)) == {("web", "stable", A), ("web", "stable", B)}
