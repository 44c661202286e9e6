"""Counters of proxy worker generations that ended, so totals never go back.

A worker's counters live in its process. When it dies (a crash, SIGKILL, a
stuck worker replaced), they would die with it: the totals of /v1/stats
would drop and every Prometheus counter summed over workers would go
backwards. So the supervisor keeps the last tally it read of each worker
generation and, when the generation ends, adds it here; the merged stats
count this as one more worker, with nothing in flight.

What a worker counted after the supervisor's last read of it is lost with
it: the supervisor reads every worker at least every `STATS_POLL` seconds
(supervisor.py), so at most that much.
"""

from __future__ import annotations

from zerodown.dataplane.merge import Key, Tally
from zerodown.stats import Counters, sum_counters

__all__ = ["RetiredCounters"]


class RetiredCounters:
    """The counters of worker generations that are gone, summed per target."""

    def __init__(self) -> None:
        self._targets: dict[Key, Counters] = {}
        self._rejected: dict[str, int] = {}
        self._per_service: dict[str, dict[str, int]] = {}

    def __repr__(self) -> str:
        requests = sum(c.requests for c in self._targets.values())
        return f"<RetiredCounters targets={len(self._targets)} requests={requests}>"

    def add(self, tally: Tally) -> None:
        """Take in a worker generation's last tally."""
        for key, counters in tally.counters.items():
            kept = self._targets.get(key)
            self._targets[key] = sum_counters([counters] if kept is None else [kept, counters])
        for status, count in tally.rejected.items():
            self._rejected[status] = self._rejected.get(status, 0) + count
        for service, counts in tally.per_service.items():
            counted = self._per_service.setdefault(service, {})
            for kind, count in counts.items():
                counted[kind] = counted.get(kind, 0) + count

    def keep_only(self, keys: set[Key]) -> None:
        """Forget targets that left the table: their series end, and memory stays bounded."""
        for key in self._targets.keys() - keys:
            del self._targets[key]

    def tally(self) -> Tally:
        """The kept counters as one more worker's, with no request in flight."""
        return Tally(
            counters=dict(self._targets),
            rejected=dict(self._rejected),
            per_service={name: dict(counts) for name, counts in self._per_service.items()},
        )
