"""Counters of the embedded data plane: per target, summed per pool.

Hot path: `TargetMetrics.request/response/retry/eject/fail` run for every
request, so they are integer increments on __slots__ objects and a latency
observation is one bisect into fixed buckets. No locks: a worker is one event
loop thread, and totals across workers are merged from snapshots (`merge`),
never from shared memory.

Cold path: `snapshot`, `target_entry`, `pool_entry`, `merge` and
`render_prometheus` build the stats when the admin API asks for them.

The stats JSON (what the embedded data plane's `stats()` returns; the data
plane assembles it from `target_entry` and `pool_entry` so the shape is
defined here, once)::

    {
      "services": {
        "web": {
          "canary_weight": 10.0,                  # optional: percent to canary
          "panic": 0,                             # tries routed in panic (sum of its targets')
          "pools": {
            "stable": {
              "totals": {COUNTERS, "in_flight": 1, "targets": 2, "available": 2},
              "targets": {
                "127.0.0.1:9001": {
                  "state": "ready",               # admin state (target.py)
                  "health": "up",                 # up | down | ejected (health.py)
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
          }
        }
      },
      "connections": 3,                           # optional: open client connections
      "rejected": {"400": 2, "431": 1}            # answered by the proxy itself, by status
    }

COUNTERS (`TargetMetrics.snapshot`)::

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
the JSON and /metrics agree and `merge` just adds them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from zerodown.proxy.target import Target

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
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Seeded so every kind shows in JSON and /metrics from the start, even at 0
# (a series that appears only after the first failure breaks rate() queries).
FAILURE_KINDS: Final = ("connect", "timeout", "reset", "protocol", "cancelled", "other")
QUANTILES: Final = (("p50", 0.5), ("p99", 0.99))


def format_float(value: float) -> str:
    """A number as Prometheus writes it (`le` labels, sample values)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


BUCKET_LABELS: Final = (*(format_float(b) for b in LATENCY_BUCKETS), "+Inf")


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

    def cumulative(self) -> list[int]:
        return list(accumulate(self.counts))

    def buckets(self) -> dict[str, int]:
        """Cumulative counts keyed by `le` label, as JSON and Prometheus want them."""
        return dict(zip(BUCKET_LABELS, self.cumulative(), strict=True))

    def quantile(self, q: float) -> float:
        """Estimate the q-quantile (0 <= q <= 1) as Prometheus's histogram_quantile does.

        Linear interpolation inside the bucket holding the rank, the first
        bucket starting at 0. A rank in +Inf answers the highest finite bound
        (nothing better is known). An empty histogram answers 0.0, not NaN,
        because NaN is not JSON.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is not between 0 and 1")
        if self.count == 0:
            return 0.0
        rank = q * self.count
        index, below = self._bucket_of(rank)
        if index == len(LATENCY_BUCKETS):
            return LATENCY_BUCKETS[-1]
        lower = LATENCY_BUCKETS[index - 1] if index else 0.0
        upper = LATENCY_BUCKETS[index]
        return lower + (upper - lower) * (rank - below) / self.counts[index]

    def _bucket_of(self, rank: float) -> tuple[int, int]:
        """The first non-empty bucket whose cumulative count reaches rank, and the count below."""
        below = 0
        for index, n in enumerate(self.counts):
            if n and below + n >= rank:
                return index, below
            below += n
        raise AssertionError("rank beyond count")  # callers keep rank <= count

    def absorb(self, latency: Mapping[str, Any]) -> None:
        """Add a snapshot's latency (cumulative `buckets`, `count`, `sum`) to this one."""
        buckets, previous = latency["buckets"], 0
        for index, label in enumerate(BUCKET_LABELS):
            cumulative = int(buckets[label])
            self.counts[index] += cumulative - previous
            previous = cumulative
        self.count += int(latency["count"])
        self.sum += float(latency["sum"])

    def snapshot(self) -> dict[str, Any]:
        quantiles = {name: self.quantile(q) for name, q in QUANTILES}
        return {"count": self.count, "sum": self.sum, **quantiles, "buckets": self.buckets()}


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

    def snapshot(self) -> dict[str, Any]:
        """The counters, JSON-ready (the COUNTERS part of the stats shape)."""
        return {
            "requests": self.requests,
            "responses": dict(zip(STATUS_CLASSES, self.responses, strict=True)),
            "retries": self.retries,
            "ejections": self.ejections,
            "panic": self.panics,
            "failures": dict(self.failures),
            "latency": self.latency.snapshot(),
        }

    def absorb(self, snapshot: Mapping[str, Any]) -> None:
        """Add another snapshot's counters to these (extra keys are ignored)."""
        self.requests += int(snapshot["requests"])
        for index, name in enumerate(STATUS_CLASSES):
            self.responses[index] += int(snapshot["responses"][name])
        self.retries += int(snapshot["retries"])
        self.ejections += int(snapshot["ejections"])
        self.panics += int(snapshot.get("panic", 0))  # absent from older snapshots
        for kind, n in snapshot["failures"].items():
            self.failures[kind] = self.failures.get(kind, 0) + int(n)
        self.latency.absorb(snapshot["latency"])


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum counter snapshots (targets of a pool, or one target across workers).

    Takes anything shaped like COUNTERS, target entries included; quantiles are
    re-estimated from the merged buckets, never averaged.
    """
    total = TargetMetrics()
    for snapshot in snapshots:
        total.absorb(snapshot)
    return total.snapshot()


def target_entry(target: Target, metrics: TargetMetrics | None = None) -> dict[str, Any]:
    """One target's entry in the stats JSON: what it is now plus its counters.

    `metrics` defaults to `target.metrics`; a target without metrics (pure
    tests) reports zeros.
    """
    metrics = metrics if metrics is not None else target.metrics
    counters = (metrics if metrics is not None else TargetMetrics()).snapshot()
    return {
        "state": target.state,
        "health": target.health.state,
        "serving": target.health.serving,
        "available": target.available,
        "weight": target.weight,
        "version": target.version,
        "in_flight": target.in_flight,
        **counters,
    }


def service_panic(pools: Mapping[Any, Mapping[str, Any]]) -> int:
    """A service's panic-routed tries, from its pool entries."""
    return sum(int(pool["totals"]["panic"]) for pool in pools.values())


def answered_counts(stats: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """(service, target address) -> responses below 500, from one worker's stats.

    A supervisor that serves nothing itself learns from these growing that a
    target is answering (health.py: a busy target is not a dead one).
    """
    counts: dict[tuple[str, str], int] = {}
    for service, entry in stats.get("services", {}).items():
        for pool in entry.get("pools", {}).values():
            for address, target in pool.get("targets", {}).items():
                responses = target["responses"]
                counts[service, address] = sum(
                    int(responses[name]) for name in STATUS_CLASSES if name != "5xx"
                )
    return counts


def pool_entry(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A pool's entry in the stats JSON from its target entries (address -> entry)."""
    totals = merge(entries.values())
    totals["in_flight"] = sum(int(e["in_flight"]) for e in entries.values())
    totals["targets"] = len(entries)
    totals["available"] = sum(1 for e in entries.values() if e["available"])
    return {"totals": totals, "targets": {address: dict(e) for address, e in entries.items()}}


# -- Prometheus text exposition format 0.0.4 ----------------------------------

# name -> (type, help). Pool totals are not exported: they are sums of the
# target series, and exporting both would double every sum() over them.
FAMILIES: Final[dict[str, tuple[str, str]]] = {
    "zerodown_requests_total": (
        "counter",
        "Tries sent to a target (a retried request counts per try).",
    ),
    "zerodown_responses_total": ("counter", "Responses from a target by status class."),
    "zerodown_in_flight": ("gauge", "Requests a target is working on now."),
    "zerodown_retries_total": (
        "counter",
        "Tries that failed on a target and were retried elsewhere.",
    ),
    "zerodown_ejections_total": ("counter", "Passive-health ejections of a target."),
    "zerodown_upstream_failures_total": ("counter", "Tries that failed on a target, by kind."),
    "zerodown_request_duration_seconds": ("histogram", "Time from sending a try to its response."),
    "zerodown_target_up": ("gauge", "1 when health lets the target serve, else 0."),
    "zerodown_canary_weight_percent": ("gauge", "Share of a service's traffic sent to canary."),
    "zerodown_panic_total": (
        "counter",
        "Tries routed to a target while health had every target of the service out (panic).",
    ),
    "zerodown_rejected_total": ("counter", "Requests the proxy answered itself, by status."),
    "zerodown_client_connections": ("gauge", "Open client connections."),
}

Samples = dict[str, list[str]]


# What a target is, as opposed to what it counted: from the process that owns health.
STATE_FIELDS: Final = ("state", "health", "serving", "available", "weight", "version")


def merge_worker_stats(
    view: Mapping[str, Any], workers: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Stats over several workers: states from `view`, counters summed over `workers`.

    `view` is the supervisor's stats (it knows every target and the one
    health verdict, but serves nothing); a target a worker does not know
    yet counts zero there. Open connections and proxy answers are summed.
    """
    workers = list(workers)
    services: dict[str, Any] = {}
    for name, service in view["services"].items():
        pools = {}
        for pool_name, pool in service["pools"].items():
            entries = {}
            for address, entry in pool["targets"].items():
                theirs = [
                    found
                    for w in workers
                    if (found := _target_of(w, name, pool_name, address)) is not None
                ]
                entries[address] = {
                    **{key: entry[key] for key in STATE_FIELDS},
                    "in_flight": sum(int(t["in_flight"]) for t in theirs),
                    **merge(theirs),
                }
            pools[pool_name] = pool_entry(entries)
        services[name] = {**service, "pools": pools, "panic": service_panic(pools)}
    rejected: dict[str, int] = {}
    for w in workers:
        for status, count in w.get("rejected", {}).items():
            rejected[status] = rejected.get(status, 0) + int(count)
    return {
        "services": services,
        "connections": sum(int(w.get("connections", 0)) for w in workers),
        "rejected": dict(sorted(rejected.items())),
    }


def _target_of(
    stats: Mapping[str, Any], service: str, pool: str, address: str
) -> Mapping[str, Any] | None:
    found: Mapping[str, Any] | None = (
        (stats.get("services", {}).get(service, {}).get("pools", {}).get(pool, {}))
        .get("targets", {})
        .get(address)
    )
    return found


def render_prometheus(stats: Mapping[str, Any]) -> str:
    """The stats JSON in Prometheus text format; families without samples are left out."""
    samples: Samples = {name: [] for name in FAMILIES}
    for service, entry in stats.get("services", {}).items():
        if "canary_weight" in entry:
            _add(
                samples,
                "zerodown_canary_weight_percent",
                {"service": service},
                entry["canary_weight"],
            )
        if "panic" in entry:
            _add(samples, "zerodown_panic_total", {"service": service}, entry["panic"])
        for pool, pool_stats in entry.get("pools", {}).items():
            for address, target in pool_stats.get("targets", {}).items():
                labels = {
                    "service": service,
                    "pool": pool,
                    "target": address,
                    "version": target.get("version") or "",
                }
                _target_samples(samples, labels, target)
    for code, n in stats.get("rejected", {}).items():
        _add(samples, "zerodown_rejected_total", {"code": code}, n)
    if "connections" in stats:
        _add(samples, "zerodown_client_connections", {}, stats["connections"])
    return "".join(_family(name, lines) for name, lines in samples.items() if lines)


def _target_samples(samples: Samples, labels: dict[str, str], target: Mapping[str, Any]) -> None:
    _add(samples, "zerodown_requests_total", labels, target["requests"])
    for code, n in target["responses"].items():
        _add(samples, "zerodown_responses_total", {**labels, "code": code}, n)
    _add(samples, "zerodown_in_flight", labels, target["in_flight"])
    _add(samples, "zerodown_retries_total", labels, target["retries"])
    _add(samples, "zerodown_ejections_total", labels, target["ejections"])
    for kind, n in target["failures"].items():
        _add(samples, "zerodown_upstream_failures_total", {**labels, "kind": kind}, n)
    _histogram_samples(samples, labels, target["latency"])
    _add(samples, "zerodown_target_up", labels, 1 if target["serving"] else 0)


def _histogram_samples(
    samples: Samples, labels: dict[str, str], latency: Mapping[str, Any]
) -> None:
    family = "zerodown_request_duration_seconds"
    lines = samples[family]
    for le, n in latency["buckets"].items():
        lines.append(_sample(f"{family}_bucket", {**labels, "le": le}, n))
    lines.append(_sample(f"{family}_sum", labels, latency["sum"]))
    lines.append(_sample(f"{family}_count", labels, latency["count"]))


def _add(samples: Samples, family: str, labels: Mapping[str, str], value: float) -> None:
    samples[family].append(_sample(family, labels, value))


def _family(name: str, lines: list[str]) -> str:
    kind, help_text = FAMILIES[name]
    return f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {kind}\n" + "".join(lines)


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if labels:
        pairs = ",".join(f'{key}="{_escape_label(str(val))}"' for key, val in labels.items())
        name = f"{name}{{{pairs}}}"
    return f"{name} {_format_value(value)}\n"


def _format_value(value: float) -> str:
    # bool before int: True is an int, and "True" is not a sample value.
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return format_float(value)


def _escape_label(value: str) -> str:
    # The exposition format escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
