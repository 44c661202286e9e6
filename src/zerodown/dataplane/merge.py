"""Stats over several proxy workers: what each counted, summed under one view.

Each worker counts only the requests it served; the supervisor serves none
but holds the table and the one health verdict. So a target's facts (state,
health, weight) come from the supervisor's view and its counts are the sum
of every worker's, plus those of worker generations that ended
(counters.py). Quantiles are re-estimated from the summed buckets, never
averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from zerodown.routing import PoolName
from zerodown.stats import (
    SERVICE_COUNTS,
    STATUS_CLASSES,
    Counters,
    PoolStats,
    ServiceStats,
    Stats,
    TargetStats,
    pool_entry,
    service_counts,
    service_panic,
    sum_counters,
)

__all__ = ["Key", "Tally", "answered_counts", "merge_worker_stats", "target_keys"]

Key = tuple[str, PoolName, str]  # service, pool, target address


@dataclass(frozen=True, slots=True)
class Tally:
    """What one worker counted (or the generations that ended): counts per target."""

    counters: Mapping[Key, Counters]
    in_flight: Mapping[Key, int] = field(default_factory=dict)
    connections: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    # Per service: its own counts (stats.SERVICE_COUNTS: refusals, cache hits and misses).
    per_service: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: Stats) -> Tally:
        """A worker's tally from its own stats."""
        entries = dict(target_entries(stats))
        return cls(
            counters=entries,
            in_flight={key: entry.in_flight for key, entry in entries.items()},
            connections=stats.connections,
            rejected=stats.rejected,
            per_service={name: service_counts(entry) for name, entry in stats.services.items()},
        )


def target_entries(stats: Stats) -> Iterator[tuple[Key, TargetStats]]:
    """Every target of a stats document, by (service, pool, address)."""
    for service, entry in stats.services.items():
        for pool, pool_stats in entry.pools.items():
            for address, target in pool_stats.targets.items():
                yield (service, pool, address), target


def target_keys(stats: Stats) -> set[Key]:
    """Every (service, pool, address) in a stats document."""
    return {key for key, _ in target_entries(stats)}


def merge_worker_stats(view: Stats, tallies: Iterable[Tally]) -> Stats:
    """Stats over several workers: facts from `view`, counts summed over `tallies`.

    `view` is the supervisor's stats (it knows every target and the one
    health verdict, but serves nothing); a target a worker does not know
    yet counts zero there. Open connections and proxy answers are summed.
    """
    tallies = list(tallies)
    services = {
        name: _merged_service(name, service, tallies) for name, service in view.services.items()
    }
    rejected: dict[str, int] = {}
    for tally in tallies:
        for status, count in tally.rejected.items():
            rejected[status] = rejected.get(status, 0) + count
    return Stats(
        services=services,
        connections=sum(tally.connections for tally in tallies),
        rejected=dict(sorted(rejected.items())),
    )


def _merged_service(name: str, service: ServiceStats, tallies: list[Tally]) -> ServiceStats:
    pools: dict[PoolName, PoolStats] = {}
    for pool_name, pool in service.pools.items():
        entries = {}
        for address, entry in pool.targets.items():
            key = (name, pool_name, address)
            theirs = [tally for tally in tallies if key in tally.counters]
            in_flight = sum(tally.in_flight.get(key, 0) for tally in theirs)
            entries[address] = entry.counted(
                in_flight, sum_counters(tally.counters[key] for tally in theirs)
            )
        pools[pool_name] = pool_entry(entries)
    panic = service_panic(pools)
    counts = {
        kind: sum(tally.per_service.get(name, {}).get(kind, 0) for tally in tallies)
        for kind in SERVICE_COUNTS
    }
    return ServiceStats(pools=pools, canary_weight=service.canary_weight, panic=panic, **counts)


def answered_counts(stats: Stats) -> dict[tuple[str, str], int]:
    """(service, target address) -> responses below 500, from one worker's stats.

    A supervisor that serves nothing itself learns from these growing that a
    target is answering (health.py: a busy target is not a dead one).
    """
    counts: dict[tuple[str, str], int] = {}
    for (service, _, address), target in target_entries(stats):
        responses = target.responses
        counts[service, address] = sum(
            responses.get(name, 0) for name in STATUS_CLASSES if name != "5xx"
        )
    return counts
