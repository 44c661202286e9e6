"""What a data plane reports: counters per service, pool and target (`DataPlane.stats()`).

The one contract every data plane fills in (the embedded proxy today;
HAProxy's `show stat` and nginx's access log next) and every reader reads:
the canary judge, /v1/stats, /metrics. Pydantic models rather than frozen
dataclasses, for two reasons: the admin API is FastAPI, so its OpenAPI
schema describes /v1/stats from these classes; and stats cross processes as
JSON (worker → supervisor, data-plane host → controller), where
`model_validate` checks the other end's document instead of trusting it and
`model_dump(mode="json")` gives it back unchanged (ints, floats, strings).

The JSON, as /v1/stats serves it::

    {
      "services": {
        "web": {
          "pools": {
            "stable": {
              "totals": {COUNTERS, "in_flight": 1, "targets": 2, "available": 2},
              "targets": {
                "127.0.0.1:9001": {
                  "state": "ready",               # admin state (proxy/target.py)
                  "health": "up",                 # up | down | ejected (proxy/health.py)
                  "serving": true,                # health lets it take traffic
                  "available": true,              # ready, serving and weight > 0
                  "weight": 1,
                  "version": "v1",                # or null
                  "in_flight": 1,
                  COUNTERS
                }
              }
            },
            "canary": {"totals": {...}, "targets": {...}}
          },
          "canary_weight": 10.0,                  # percent of the service's traffic to canary
          "panic": 0,                             # tries routed in panic (sum of its targets')
          "denied": 0,                            # refused by allow/deny (403)
          "blocked": 0,                           # refused by block rules (403)
          "rate_limited": 0,                      # refused by rate_limit (429)
          "cache_hits": 0,                        # answered from the service's cache
          "cache_misses": 0                       # let through by its rules, not from the cache
        }
      },
      "connections": 3,                           # open client connections
      "rejected": {"400": 2, "431": 1},           # answered by the proxy itself, by status
      "workers": 2                                # only with several proxy workers
    }

COUNTERS::

    "requests": 10,          # tries sent to the target (a retried request counts per try)
    "responses": {"1xx": 0, "2xx": 9, "3xx": 0, "4xx": 0, "5xx": 1},
    "retries": 0,            # tries that failed here and went on to another try
    "ejections": 0,          # passive-health ejections
    "panic": 0,              # tries sent while health had every target out (panic routing)
    "failures": {"connect": 0, "timeout": 0, "reset": 0, "protocol": 0,
                 "cancelled": 0, "other": 0},   # cancelled: cut at a drain deadline
    "latency": {"count": 10, "sum": 0.123, "p50": 0.004, "p99": 0.09,
                "buckets": {"0.001": 0, ..., "60.0": 10, "+Inf": 10}}

Latency buckets are cumulative and keyed by their Prometheus `le` label, so
the JSON and /metrics agree and sums just add them. A data plane that has
no histogram reports `"buckets": {}` and its own p50/p99.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from zerodown.routing import AdminState, HealthState, PoolName

__all__ = [
    "BUCKET_LABELS",
    "FAILURE_KINDS",
    "LATENCY_BUCKETS",
    "SERVICE_COUNTS",
    "STATUS_CLASSES",
    "Counters",
    "Latency",
    "PoolStats",
    "PoolTotals",
    "ServiceStats",
    "Stats",
    "StatusClass",
    "TargetStats",
    "latency_of",
    "pool_entry",
    "quantile",
    "service_counts",
    "service_panic",
    "sum_counters",
]

# Seconds. Dense below 100 ms where a proxied app usually answers, sparse up
# to the longest upstream read timeout anyone should configure.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
StatusClass = Literal["1xx", "2xx", "3xx", "4xx", "5xx"]
STATUS_CLASSES: Final[tuple[StatusClass, ...]] = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Seeded so every kind shows in JSON and /metrics from the start, even at 0
# (a series that appears only after the first failure breaks rate() queries).
FAILURE_KINDS: Final = ("connect", "timeout", "reset", "protocol", "cancelled", "other")
QUANTILES: Final = (("p50", 0.5), ("p99", 0.99))


def _le_label(bound: float) -> str:
    # As Prometheus writes a bound: repr of the float ("0.001", "60.0").
    return "+Inf" if math.isinf(bound) else repr(float(bound))


BUCKET_LABELS: Final = (*(_le_label(b) for b in LATENCY_BUCKETS), "+Inf")


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True)


class Latency(_Value):
    count: int
    sum: float  # seconds
    p50: float  # seconds; 0.0 with no responses (NaN is not JSON)
    p99: float
    buckets: dict[str, int]  # cumulative counts by `le` label, BUCKET_LABELS order; {} unknown


class Counters(_Value):
    """What happened to the tries sent to a target (or to all targets of a pool)."""

    requests: int
    responses: dict[StatusClass, int]
    retries: int
    ejections: int
    panic: int
    failures: dict[str, int]  # FAILURE_KINDS, plus any other kind under its own name
    latency: Latency


class _TargetFacts(_Value):
    """What a target is now, as opposed to what it counted."""

    state: AdminState
    health: HealthState
    serving: bool
    available: bool
    weight: int
    version: str | None
    in_flight: int


# Counters first in the bases so that pydantic, which lays out fields from
# the last base up, writes the facts first: the JSON keeps its key order.
class TargetStats(Counters, _TargetFacts):
    """One target's entry: what it is (state, health, in flight) and what it counted."""

    def counters(self) -> Counters:
        return Counters(**{name: getattr(self, name) for name in Counters.model_fields})

    def counted(self, in_flight: int, counters: Counters) -> TargetStats:
        """These facts with other counts (a target's counts summed over workers)."""
        facts = {name: getattr(self, name) for name in _TargetFacts.model_fields}
        summed = {name: getattr(counters, name) for name in Counters.model_fields}
        return TargetStats(**{**facts, "in_flight": in_flight, **summed})


class PoolTotals(Counters):
    """A pool's targets' counters summed, with how many it has and how many take traffic."""

    in_flight: int
    targets: int
    available: int


class PoolStats(_Value):
    totals: PoolTotals
    targets: dict[str, TargetStats]  # by address


class ServiceStats(_Value):
    pools: dict[PoolName, PoolStats]
    canary_weight: float
    panic: int
    # Requests the service's own rules refused before any target saw them:
    # allow/deny (403), block (403), rate_limit (429).
    denied: int = 0
    blocked: int = 0
    rate_limited: int = 0
    # A cached service's requests that passed its rules: answered from its
    # cache (hits) or sent on to a target (misses); 0 without `cache`.
    cache_hits: int = 0
    cache_misses: int = 0


# A service's own counts, beside its pools': summed over workers as they are.
SERVICE_COUNTS: Final = ("denied", "blocked", "rate_limited", "cache_hits", "cache_misses")


class Stats(_Value):
    """Everything `DataPlane.stats()` reports."""

    services: dict[str, ServiceStats]
    connections: int
    rejected: dict[str, int]  # by status code, as a string (a JSON key)
    # Only a multi-worker data plane says how many of its workers run.
    workers: int | None = Field(default=None, exclude_if=lambda workers: workers is None)
    # Services whose requests the data plane does not report now, so their
    # targets' counts stand still (nginx with `[proxy.nginx] request_stats =
    # "canary"` and no canary: dataplane/request_stats.py). Refusals count.
    not_counted: list[str] = Field(default_factory=list, exclude_if=lambda names: not names)


# -- building and summing -------------------------------------------------------


def quantile(counts: Sequence[int], q: float) -> float:
    """Estimate the q-quantile (0 <= q <= 1) of per-bucket counts (BUCKET_LABELS order).

    As Prometheus's histogram_quantile: linear interpolation inside the
    bucket holding the rank, the first bucket starting at 0. A rank in +Inf
    answers the highest finite bound (nothing better is known). No counts
    answer 0.0, not NaN, because NaN is not JSON.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    total = sum(counts)
    if total == 0:
        return 0.0
    rank, below = q * total, 0
    for index, n in enumerate(counts):
        if n and below + n >= rank:
            if index == len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lower = LATENCY_BUCKETS[index - 1] if index else 0.0
            upper = LATENCY_BUCKETS[index]
            return lower + (upper - lower) * (rank - below) / n
        below += n
    raise AssertionError("rank beyond count")  # rank <= total by construction


def latency_of(counts: Sequence[int], count: int, seconds: float) -> Latency:
    """Latency from per-bucket counts; quantiles estimated from them, never averaged."""
    quantiles = {name: quantile(counts, q) for name, q in QUANTILES}
    cumulative, running = {}, 0
    for label, n in zip(BUCKET_LABELS, counts, strict=True):
        running += n
        cumulative[label] = running
    return Latency(count=count, sum=seconds, **quantiles, buckets=cumulative)


def sum_counters(items: Iterable[Counters]) -> Counters:
    """Counters summed (targets of a pool, or one target across workers)."""
    responses = dict.fromkeys(STATUS_CLASSES, 0)
    failures = dict.fromkeys(FAILURE_KINDS, 0)
    cumulative = [0] * len(BUCKET_LABELS)
    requests = retries = ejections = panic = count = 0
    seconds = 0.0
    for item in items:
        requests += item.requests
        retries += item.retries
        ejections += item.ejections
        panic += item.panic
        for name, n in item.responses.items():
            responses[name] += n
        for kind, n in item.failures.items():
            failures[kind] = failures.get(kind, 0) + n
        for index, label in enumerate(BUCKET_LABELS):
            cumulative[index] += item.latency.buckets.get(label, 0)  # {}: no histogram
        count += item.latency.count
        seconds += item.latency.sum
    counts = [b - a for a, b in zip((0, *cumulative[:-1]), cumulative, strict=True)]
    return Counters(
        requests=requests,
        responses=responses,
        retries=retries,
        ejections=ejections,
        panic=panic,
        failures=failures,
        latency=latency_of(counts, count, seconds),
    )


def pool_entry(targets: Mapping[str, TargetStats]) -> PoolStats:
    """A pool's entry from its targets' (address -> entry)."""
    summed = sum_counters(targets.values())
    totals = PoolTotals(
        **{name: getattr(summed, name) for name in Counters.model_fields},
        in_flight=sum(t.in_flight for t in targets.values()),
        targets=len(targets),
        available=sum(1 for t in targets.values() if t.available),
    )
    return PoolStats(totals=totals, targets=dict(targets))


def service_counts(service: ServiceStats) -> dict[str, int]:
    """A service's SERVICE_COUNTS, by name."""
    return {name: getattr(service, name) for name in SERVICE_COUNTS}


def service_panic(pools: Mapping[PoolName, PoolStats]) -> int:
    """A service's panic-routed tries, from its pools."""
    return sum(pool.totals.panic for pool in pools.values())
