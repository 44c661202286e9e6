"""A recording `DataPlane`: it carries no traffic, it remembers what it was told.

Every routing table applied and every drain is kept in order, so a test can
assert how traffic moved step by step (`history`), not only where it ended.
The counters `stats()` returns are scripted: per pool, how much traffic
passed between two reads (`serve`), counted by the real `TargetMetrics`, so
the canary judge reads the shape the embedded data plane produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from fakes.changes import Changes
from zerodown.dataplane.base import DataPlane
from zerodown.proxy.metrics import TargetMetrics
from zerodown.routing import DrainResult, PoolName, RoutingTable, ServiceSpec, TargetSpec
from zerodown.stats import Counters, PoolStats, PoolTotals, ServiceStats, Stats

NOTHING = "-"  # `describe` of a service with no target in its table


@dataclass(frozen=True, slots=True)
class PoolTraffic:
    """What one pool answers between two `stats()` reads."""

    requests: int
    errors: int = 0  # of those, answered 5xx
    seconds: float = 0.005  # latency of each, or the median with a spread
    # Log-normal sigma of the latencies: 0 gives every request `seconds`;
    # 0.5 is a typical web app's spread. Drawn at evenly spaced quantiles,
    # not at random, so that every interval has the same distribution and a
    # test's request counts are exact.
    spread: float = 0.0

    def latencies(self) -> list[float]:
        n = self.requests
        if not self.spread:
            return [self.seconds] * n
        normal = NormalDist()
        return [
            self.seconds * math.exp(self.spread * normal.inv_cdf((i + 0.5) / n)) for i in range(n)
        ]


@dataclass(frozen=True, slots=True)
class Drained:
    service: str
    address: str
    timeout: float


def describe(spec: ServiceSpec) -> str:
    """One service's part of a table in one line: versions of the stable
    pool's targets ("~" marks one draining), then the canary pool and its
    weight, then whether requests are held. E.g. "v1 v1~ | canary v2 10% | hold".
    """
    parts = [_targets(spec.stable.targets) or NOTHING]
    if spec.canary.targets or spec.split.canary_weight:
        canary = _targets(spec.canary.targets) or NOTHING
        parts.append(f"canary {canary} {spec.split.canary_weight:g}%")
    if spec.hold is not None:
        parts.append("hold")
    return " | ".join(parts)


def _targets(targets: tuple[TargetSpec, ...]) -> str:
    labels = [f"{t.version}{'~' if t.state == 'draining' else ''}" for t in targets]
    return " ".join(sorted(labels))


class RecordingDataPlane(DataPlane):
    def __init__(self) -> None:
        self.tables: list[RoutingTable] = []
        self.drains: list[Drained] = []
        self.changes = Changes()
        self.stats_reads = 0
        self._traffic: dict[tuple[str, PoolName], PoolTraffic] = {}
        self._totals: dict[tuple[str, PoolName], TargetMetrics] = {}

    def __repr__(self) -> str:
        return f"<RecordingDataPlane tables={len(self.tables)} drains={len(self.drains)}>"

    # -- the DataPlane interface ---------------------------------------------------

    async def apply(self, table: RoutingTable) -> None:
        self.tables.append(table)
        self.changes.notify()

    def routing(self) -> RoutingTable:
        return self.tables[-1] if self.tables else RoutingTable()

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        self.drains.append(Drained(service, address, timeout))
        self.changes.notify()
        return DrainResult(service, address, completed=True, cancelled=0, seconds=0.0)

    async def stats(self) -> Stats:
        """The totals after one more interval of the scripted traffic."""
        self.stats_reads += 1
        for key, traffic in self._traffic.items():
            _count(self._totals.setdefault(key, TargetMetrics()), traffic)
        pools: dict[str, dict[PoolName, PoolStats]] = {}
        for (service, pool), metrics in self._totals.items():
            pools.setdefault(service, {})[pool] = _pool(metrics.snapshot())
        services = {
            name: ServiceStats(pools=by_pool, canary_weight=0.0, panic=0)
            for name, by_pool in pools.items()
        }
        return Stats(services=services, connections=0, rejected={})

    async def prometheus(self) -> str:
        return ""

    # -- what a test sets and reads --------------------------------------------------

    def serve(self, service: str, pool: PoolName, traffic: PoolTraffic) -> None:
        """From now on, `pool` of `service` answers `traffic` between two stats reads."""
        self._traffic[(service, pool)] = traffic

    def spec(self, service: str, index: int = -1) -> ServiceSpec:
        """`service` as the table at `index` (default: the one in force) has it."""
        spec = self.tables[index].service(service)
        assert spec is not None, f"no {service} in table {index}"
        return spec

    def history(self, service: str, since: int = 0) -> list[str]:
        """`describe` of `service` in every table applied from index `since`
        on, repeats collapsed."""
        lines: list[str] = []
        for table in self.tables[since:]:
            spec = table.service(service)
            line = describe(spec) if spec is not None else NOTHING
            if not lines or lines[-1] != line:
                lines.append(line)
        return lines

    def addresses(self, service: str, index: int = -1) -> set[str]:
        """Every address the table at `index` routes for `service`, either pool."""
        spec = self.spec(service, index)
        return {t.address for t in (*spec.stable.targets, *spec.canary.targets)}


def _pool(counters: Counters) -> PoolStats:
    """A pool whose one (unnamed) target counted `counters`: only the totals are read."""
    fields = {name: getattr(counters, name) for name in Counters.model_fields}
    totals = PoolTotals(**fields, in_flight=0, targets=1, available=1)
    return PoolStats(totals=totals, targets={})


def _count(metrics: TargetMetrics, traffic: PoolTraffic) -> None:
    # Errors spread over the interval, so that they meet every latency alike.
    step = traffic.requests / traffic.errors if traffic.errors else 0.0
    failing = {int(i * step) for i in range(traffic.errors)}
    for n, seconds in enumerate(traffic.latencies()):
        metrics.request()
        metrics.response(500 if n in failing else 200, seconds)
