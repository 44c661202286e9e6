"""Counters of proxy worker generations that ended, so totals never go back.

A worker's counters live in its process. When it dies (a crash, SIGKILL, a
stuck worker replaced), they would die with it: the totals of /v1/stats
would drop and every Prometheus counter summed over workers would go
backwards. So the supervisor keeps the last snapshot it read of each worker
generation and, when the generation ends, adds it here; the merged stats
count this as one more worker, with nothing in flight.

What a worker counted after the supervisor's last read of it is lost with
it: the supervisor reads every worker at least every `STATS_POLL` seconds
(supervisor.py), so at most that much.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from zerodown.proxy.metrics import merge

__all__ = ["Key", "RetiredCounters", "target_keys"]

Key = tuple[str, str, str]  # service, pool, target address


class RetiredCounters:
    """The counters of worker generations that are gone, summed per target."""

    def __init__(self) -> None:
        self._targets: dict[Key, dict[str, Any]] = {}
        self._rejected: dict[str, int] = {}

    def __repr__(self) -> str:
        requests = sum(int(c["requests"]) for c in self._targets.values())
        return f"<RetiredCounters targets={len(self._targets)} requests={requests}>"

    def add(self, stats: Mapping[str, Any]) -> None:
        """Take in a worker's last stats (its `ProxyServer.stats()` shape)."""
        for key, counters in _target_entries(stats):
            kept = self._targets.get(key)
            self._targets[key] = merge([counters] if kept is None else [kept, counters])
        for status, count in stats.get("rejected", {}).items():
            self._rejected[status] = self._rejected.get(status, 0) + int(count)

    def keep_only(self, keys: set[Key]) -> None:
        """Forget targets that left the table: their series end, and memory stays bounded."""
        for key in self._targets.keys() - keys:
            del self._targets[key]

    def stats(self) -> dict[str, Any]:
        """The kept counters in a worker's stats shape, with no request in flight."""
        services: dict[str, Any] = {}
        for (service, pool, address), counters in self._targets.items():
            pools = services.setdefault(service, {"pools": {}})["pools"]
            targets = pools.setdefault(pool, {"targets": {}})["targets"]
            targets[address] = {**counters, "in_flight": 0}
        return {"services": services, "connections": 0, "rejected": dict(self._rejected)}


def target_keys(stats: Mapping[str, Any]) -> set[Key]:
    """Every (service, pool, address) in a stats document."""
    return {key for key, _ in _target_entries(stats)}


def _target_entries(stats: Mapping[str, Any]) -> Iterator[tuple[Key, Mapping[str, Any]]]:
    for service, entry in stats.get("services", {}).items():
        for pool, pool_entry in entry.get("pools", {}).items():
            for address, target in pool_entry.get("targets", {}).items():
                yield (service, pool, address), target
