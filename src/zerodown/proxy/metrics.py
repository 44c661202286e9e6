"""Counters of the embedded data plane, one `TargetMetrics` per target.

Hot path: `TargetMetrics.request/response/retry/eject/panic/fail` run for
every request, so they are integer increments on __slots__ objects and a
latency observation is one bisect into fixed buckets. No locks: a worker is
one event loop thread, and totals across workers are summed from snapshots
(dataplane/merge.py), never from shared memory.

Cold path: `snapshot` and `target_entry` turn them into the typed stats
(stats.py) when someone asks.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from zerodown.stats import (
    BUCKET_LABELS,
    FAILURE_KINDS,
    LATENCY_BUCKETS,
    STATUS_CLASSES,
    Counters,
    Latency,
    TargetStats,
    latency_of,
    quantile,
)

if TYPE_CHECKING:
    from zerodown.proxy.target import Target

__all__ = [
    "BUCKET_LABELS",
    "FAILURE_KINDS",
    "LATENCY_BUCKETS",
    "STATUS_CLASSES",
    "Histogram",
    "TargetMetrics",
    "target_entry",
]


class Histogram:
    """Latency in fixed buckets; `counts` is per bucket, the last one is +Inf."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKET_LABELS)
        self.count = 0
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} sum={self.sum:.6f}>"

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket
        # (Prometheus `le` is "less than or equal").
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def quantile(self, q: float) -> float:
        """The q-quantile estimated as Prometheus's histogram_quantile does (stats.quantile)."""
        return quantile(self.counts, q)

    def snapshot(self) -> Latency:
        return latency_of(self.counts, self.count, self.sum)


class TargetMetrics:
    """What happened to the requests one target got. One per Target, owned by its data plane."""

    __slots__ = ("ejections", "failures", "latency", "panics", "requests", "responses", "retries")

    def __init__(self) -> None:
        self.requests = 0
        self.responses = [0] * len(STATUS_CLASSES)
        self.retries = 0
        self.ejections = 0
        self.panics = 0
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)
        self.latency = Histogram()

    def __repr__(self) -> str:
        return (
            f"<TargetMetrics requests={self.requests} responses={self.responses} "
            f"retries={self.retries} ejections={self.ejections}>"
        )

    def request(self) -> None:
        self.requests += 1

    def response(self, status: int, seconds: float) -> None:
        # A status outside 100-599 still came back as a response; clamp it to
        # the nearest class rather than lose it from the totals.
        index = status // 100 - 1
        if not 0 <= index < 5:
            index = 0 if index < 0 else 4
        self.responses[index] += 1
        self.latency.observe(seconds)

    def retry(self) -> None:
        self.retries += 1

    def eject(self) -> None:
        self.ejections += 1

    def panic(self) -> None:
        self.panics += 1

    def fail(self, kind: str) -> None:
        # An unknown kind is counted under its own name rather than dropped.
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def snapshot(self) -> Counters:
        """The counters as the stats report them."""
        return Counters(
            requests=self.requests,
            responses=dict(zip(STATUS_CLASSES, self.responses, strict=True)),
            retries=self.retries,
            ejections=self.ejections,
            panic=self.panics,
            failures=dict(self.failures),
            latency=self.latency.snapshot(),
        )


def target_entry(target: Target, metrics: TargetMetrics | None = None) -> TargetStats:
    """One target's entry in the stats: what it is now plus its counters.

    `metrics` defaults to `target.metrics`; a target without metrics (pure
    tests) reports zeros.
    """
    metrics = metrics if metrics is not None else target.metrics
    counters = (metrics if metrics is not None else TargetMetrics()).snapshot()
    return TargetStats(
        state=target.state,
        health=target.health.state,
        serving=target.health.serving,
        available=target.available,
        weight=target.weight,
        version=target.version,
        in_flight=target.in_flight,
        **{name: getattr(counters, name) for name in Counters.model_fields},
    )
