"""`show stat` rows + the table in force -> zerodown's Stats (zerodown/stats.py). Pure.

What HAProxy counts per server, mapped:

- requests: `stot` (streams sent to the server: one per HTTP request);
  responses: `hrsp_1xx` .. `hrsp_5xx`; in_flight: `scur`; retries: `wretr`
  + `wredis` (tries retried here, and tries sent on to another server);
  failures: `econ` as connect, `eresp` as protocol (the tries that failed
  for good: one that a retry saved counts as a retry only).
- latency: HAProxy keeps no histogram, so the driver builds one from its
  per-request log (latency.py): buckets, count, sum, p50 and p99 from it.
  A server with no logged response yet falls back on `show stat`: p50 is
  `rtime`, the mean response time of the last 1024 responses, p99
  `rtime_max`, the slowest seen (an upper bound), and `buckets` {} (as
  stats.py says a data plane without a histogram reports).
- ejections and panic are 0: HAProxy's passive marks-down are not counted
  apart from check failures, and it has no panic routing.
- a service's refusals (denied, blocked, rate_limited): from the
  per-request log (latency.py), which logs every refusal whatever
  request_stats says; with `cache`, its hits and misses: the backend's own
  `cache_hits` and `cache_lookups` in show stat (a miss: a lookup not hit).

A tcp service's servers (`mode tcp`) have no HTTP responses; a
connection is the request (docs/tcp.md). `stot` counts every connection
sent to the server, `econ` those whose connect failed for good, `eresp`
those the server aborted (its `srv_abrt`: a reset, in tcp mode), `wretr` +
`wredis` those retried; what ended otherwise is an answer (a 2xx):
stot - scur - the rest. No latency: no tcp line is logged (latency.py), so
the judge decides on errors alone there.

Pools come from the table: a server belongs to the pool its target is in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from zerodown.dataplane.haproxy.runtime import StatRow
from zerodown.dataplane.haproxy.servers import backend_name, server_name
from zerodown.proxy.metrics import Histogram
from zerodown.routing import HealthState, PoolName, PoolSpec, RoutingTable, ServiceSpec, TargetSpec
from zerodown.stats import (
    BUCKET_LABELS,
    FAILURE_KINDS,
    SERVICE_COUNTS,
    STATUS_CLASSES,
    Counters,
    Latency,
    PoolStats,
    PoolTotals,
    ServiceStats,
    Stats,
    StatusClass,
    TargetStats,
    latency_of,
    sum_counters,
)

__all__ = ["build_stats", "target_stats"]


Histograms = Mapping[tuple[str, str], Histogram]  # (backend, server) -> from the log
BackendCounts = Mapping[str, Mapping[str, int]]  # backend -> SERVICE_COUNTS name -> from the log
_CACHE_COUNTS = ("cache_hits", "cache_misses")


def build_stats(
    table: RoutingTable,
    rows: Sequence[StatRow],
    connections: int = 0,
    latency: Histograms | None = None,
    backends: BackendCounts | None = None,
    cache: Mapping[str, tuple[int, int]] | None = None,
) -> Stats:
    """`backends`: refusals from the log; `cache`: backend -> (lookups, hits)
    from show stat (runtime.backend_cache)."""
    by_name = {(row.backend, row.name): row for row in rows}
    services = {
        spec.name: _service(spec, by_name, latency or {}, backends or {}, cache or {})
        for spec in table.services
    }
    return Stats(services=services, connections=connections, rejected={})


def _service(
    spec: ServiceSpec,
    rows: Mapping[tuple[str, str], StatRow],
    latency: Histograms,
    backends: BackendCounts,
    cache: Mapping[str, tuple[int, int]],
) -> ServiceStats:
    pools: dict[PoolName, PoolStats] = {
        "stable": _pool(spec, spec.stable, rows, latency),
        "canary": _pool(spec, spec.canary, rows, latency),
    }
    name = backend_name(spec.name)
    logged = backends.get(name, {})
    counts = {kind: logged.get(kind, 0) for kind in SERVICE_COUNTS if kind not in _CACHE_COUNTS}
    if spec.cache is not None:  # only a cached service has hits or misses
        lookups, hits = cache.get(name, (0, 0))
        counts |= {"cache_hits": hits, "cache_misses": lookups - hits}
    return ServiceStats(pools=pools, canary_weight=spec.split.canary_weight, panic=0, **counts)


def _pool(
    spec: ServiceSpec,
    pool: PoolSpec,
    rows: Mapping[tuple[str, str], StatRow],
    latency: Histograms,
) -> PoolStats:
    backend = backend_name(spec.name)
    keys = {t.address: (backend, server_name(t.address)) for t in pool.targets}
    tcp = spec.mode == "tcp"
    targets = {
        t.address: target_stats(t, rows.get(keys[t.address]), latency.get(keys[t.address]), tcp)
        for t in pool.targets
    }
    summed = sum_counters(targets.values())
    counters = {name: getattr(summed, name) for name in Counters.model_fields}
    counters["latency"] = _pool_latency([t.latency for t in targets.values()])
    totals = PoolTotals(
        **counters,
        in_flight=sum(t.in_flight for t in targets.values()),
        targets=len(targets),
        available=sum(1 for t in targets.values() if t.available),
    )
    return PoolStats(totals=totals, targets=targets)


def _pool_latency(items: Sequence[Latency]) -> Latency:
    """The targets' histograms added; with none to add, the pool's p50 is
    its targets' p50 weighted by their counts, and its p99 the worst target's."""
    if any(item.buckets for item in items):
        counted = [item for item in items if item.buckets]
        cumulative = [sum(i.buckets.get(label, 0) for i in counted) for label in BUCKET_LABELS]
        counts = [b - a for a, b in zip((0, *cumulative[:-1]), cumulative, strict=True)]
        return latency_of(counts, sum(i.count for i in counted), sum(i.sum for i in counted))
    count = sum(item.count for item in items)
    p50 = sum(item.p50 * item.count for item in items) / count if count else 0.0
    p99 = max((item.p99 for item in items if item.count), default=0.0)
    return Latency(count=count, sum=sum(i.sum for i in items), p50=p50, p99=p99, buckets={})


def target_stats(
    target: TargetSpec, row: StatRow | None, histogram: Histogram | None = None, tcp: bool = False
) -> TargetStats:
    """One target's entry; a target HAProxy does not list (yet) counts nothing and is down.
    `tcp`: a tcp service's server, whose connections are its requests (_tcp_counts)."""
    health: HealthState = (
        "down" if row is None or row.status.startswith(("DOWN", "MAINT")) else "up"
    )
    serving = health == "up"
    responses = dict(zip(STATUS_CLASSES, row.responses if row else (0,) * 5, strict=True))
    answered = sum(responses.values())
    mean = row.response_ms / 1000 if row else 0.0
    failures = dict.fromkeys(FAILURE_KINDS, 0)
    failures["connect"] = row.connect_errors if row else 0
    failures["protocol"] = row.response_errors if row else 0
    if tcp and row is not None:
        responses, failures = _tcp_counts(row)
        answered = responses["2xx"]
    return TargetStats(
        state=target.state,
        health=health,
        serving=serving,
        available=target.state == "ready" and serving and target.weight > 0,
        weight=target.weight,
        version=target.version,
        in_flight=row.sessions if row else 0,
        requests=row.total if row else 0,
        responses=responses,
        retries=row.retries + row.redispatches if row else 0,
        ejections=0,
        panic=0,
        failures=failures,
        latency=histogram.snapshot()
        if histogram is not None
        else Latency(
            count=answered,
            sum=mean * answered,
            p50=mean,
            p99=row.response_max_ms / 1000 if row else 0.0,
            buckets={},
        ),
    )


def _tcp_counts(row: StatRow) -> tuple[dict[StatusClass, int], dict[str, int]]:
    """A tcp server's connections as responses and failures: those that ended
    neither failed nor retried are answers (2xx); an abort by the server is a
    `reset`. Open ones (scur) have no outcome yet, as on the other data planes."""
    failures = dict.fromkeys(FAILURE_KINDS, 0)
    failures["connect"] = row.connect_errors
    failures["reset"] = row.response_errors
    retried = row.retries + row.redispatches
    ended = row.total - row.sessions - row.connect_errors - row.response_errors - retried
    responses: dict[StatusClass, int] = dict.fromkeys(STATUS_CLASSES, 0)
    responses["2xx"] = max(0, ended)
    return responses, failures
