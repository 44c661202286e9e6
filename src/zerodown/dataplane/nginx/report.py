"""The table, the access-log counters and the health verdicts -> Stats. Pure.

nginx cannot tell how many requests a target has open: it logs a request
when it ends, open-source nginx has no per-upstream live counters (that is
NGINX Plus's API), and its connections to a target cannot stand in for
them (`keepalive` holds idle ones open). So `in_flight` is 0 here; drains
wait on the old workers instead (driver.py). Everything else is counted.
`panic` counts tries at targets the live config routes to only because our
checks had every target of their pool out (accesslog.AccessCounters.in_panic);
nginx's own fallback to the `backup # panic` servers (max_fails) shows the
same address in the log as the primary, so it cannot be told apart.
`connections` comes from stub_status on the control socket (all workers,
old ones still finishing included). Refusals and cache hits and misses are
the log's too.
"""

from __future__ import annotations

from collections.abc import Collection

from zerodown.dataplane.nginx.accesslog import AccessCounters
from zerodown.dataplane.request_stats import RequestStats, counted
from zerodown.proxy.metrics import TargetMetrics
from zerodown.routing import PoolName, PoolSpec, RoutingTable, ServiceSpec, TargetSpec
from zerodown.stats import (
    Counters,
    PoolStats,
    ServiceStats,
    Stats,
    TargetStats,
    pool_entry,
    service_panic,
)

__all__ = ["build_stats"]


def build_stats(
    table: RoutingTable,
    counters: AccessCounters,
    unhealthy: Collection[tuple[str, str]],
    connections: int = 0,
    request_stats: RequestStats = "always",
) -> Stats:
    services = {s.name: _service(s, counters, unhealthy) for s in table.services}
    not_counted = [s.name for s in table.services if not counted(s, request_stats)]
    rejected = dict(counters.rejected)
    return Stats(
        services=services, connections=connections, rejected=rejected, not_counted=not_counted
    )


def _service(
    spec: ServiceSpec, counters: AccessCounters, unhealthy: Collection[tuple[str, str]]
) -> ServiceStats:
    pools: dict[PoolName, PoolStats] = {
        "stable": _pool(spec.name, spec.stable, counters, unhealthy),
        "canary": _pool(spec.name, spec.canary, counters, unhealthy),
    }
    refused = counters.refused.get(spec.name, {})
    # Every request of a service counts a hit or a miss; only a cached one has either.
    hits, misses = counters.cache.get(spec.name, (0, 0)) if spec.cache is not None else (0, 0)
    return ServiceStats(
        pools=pools,
        canary_weight=spec.split.canary_weight,
        panic=service_panic(pools),
        denied=refused.get("denied", 0),
        blocked=refused.get("blocked", 0),
        rate_limited=refused.get("rate_limited", 0),
        cache_hits=hits,
        cache_misses=misses,
    )


def _pool(
    service: str, pool: PoolSpec, counters: AccessCounters, unhealthy: Collection[tuple[str, str]]
) -> PoolStats:
    return pool_entry(
        {
            t.address: _target(t, counters.targets.get((service, t.address)), unhealthy, service)
            for t in pool.targets
        }
    )


def _target(
    spec: TargetSpec,
    metrics: TargetMetrics | None,
    unhealthy: Collection[tuple[str, str]],
    service: str,
) -> TargetStats:
    serving = (service, spec.address) not in unhealthy
    counted = (metrics or TargetMetrics()).snapshot()
    return TargetStats(
        state=spec.state,
        health="up" if serving else "down",
        serving=serving,
        available=spec.state == "ready" and serving and spec.weight > 0,
        weight=spec.weight,
        version=spec.version,
        in_flight=0,
        **{name: getattr(counted, name) for name in Counters.model_fields},
    )
