"""A service's own counts (refusals, cache hits and misses) summed over proxy
workers and over worker generations that ended, so they never go back. Pure."""

from __future__ import annotations

from zerodown.dataplane.counters import RetiredCounters
from zerodown.dataplane.merge import Tally, merge_worker_stats
from zerodown.stats import SERVICE_COUNTS, ServiceStats, Stats, pool_entry


def stats(**counts: int) -> Stats:
    service = ServiceStats(pools={"stable": pool_entry({})}, canary_weight=0.0, panic=0, **counts)
    return Stats(services={"web": service}, connections=0, rejected={})


def test_cache_hits_and_refusals_add_up_over_workers_and_ended_generations() -> None:
    one = Tally.of(stats(cache_hits=3, cache_misses=1, rate_limited=2))
    two = Tally.of(stats(cache_hits=4, cache_misses=2, denied=1))
    gone = RetiredCounters()
    gone.add(Tally.of(stats(cache_hits=10, blocked=5)))
    merged = merge_worker_stats(stats(), [one, two, gone.tally()]).services["web"]
    assert {name: getattr(merged, name) for name in SERVICE_COUNTS} == {
        "denied": 1,
        "blocked": 5,
        "rate_limited": 2,
        "cache_hits": 17,
        "cache_misses": 3,
    }
