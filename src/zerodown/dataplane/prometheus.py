"""The stats in Prometheus text exposition format 0.0.4 (`DataPlane.prometheus()`).

prometheus_client writes the text (escaping, number format, HELP/TYPE); a
collector here turns one typed stats document into metric families, so any
data plane that reports `Stats` has /metrics for free. Label values are
sorted by name in the output, as prometheus_client writes them.

Pool totals are not exported: they are sums of the target series, and
exporting both would double every sum() over them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from zerodown.stats import Stats, TargetStats

__all__ = ["StatsCollector", "render_prometheus"]

TARGET_LABELS = ("service", "pool", "target", "version")


def _counter(name: str, help_text: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, labels=labels)


def _gauge(name: str, help_text: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, labels=labels)


class _Families:
    """One of each family, filled from one stats document."""

    def __init__(self) -> None:
        target = TARGET_LABELS
        self.requests = _counter(
            "zerodown_requests_total",
            "Tries sent to a target (a retried request counts per try).",
            *target,
        )
        self.responses = _counter(
            "zerodown_responses_total", "Responses from a target by status class.", *target, "code"
        )
        self.in_flight = _gauge(
            "zerodown_in_flight", "Requests a target is working on now.", *target
        )
        self.retries = _counter(
            "zerodown_retries_total",
            "Tries that failed on a target and were retried elsewhere.",
            *target,
        )
        self.ejections = _counter(
            "zerodown_ejections_total", "Passive-health ejections of a target.", *target
        )
        self.failures = _counter(
            "zerodown_upstream_failures_total",
            "Tries that failed on a target, by kind.",
            *target,
            "kind",
        )
        self.duration = HistogramMetricFamily(
            "zerodown_request_duration_seconds",
            "Time from sending a try to its response.",
            labels=target,
        )
        self.up = _gauge(
            "zerodown_target_up", "1 when health lets the target serve, else 0.", *target
        )
        self.canary_weight = _gauge(
            "zerodown_canary_weight_percent",
            "Share of a service's traffic sent to canary.",
            "service",
        )
        self.panic = _counter(
            "zerodown_panic_total",
            "Tries routed to a target while health had every target of the service out (panic).",
            "service",
        )
        self.refused = _counter(
            "zerodown_refused_total",
            "Requests a service's own rules refused: denied (allow/deny), blocked, rate_limited.",
            "service",
            "reason",
        )
        self.cache = _counter(
            "zerodown_cache_requests_total",
            "A cached service's requests its rules let through: answered from its cache "
            "(hit) or sent on (miss).",
            "service",
            "result",
        )
        self.rejected = _counter(
            "zerodown_rejected_total", "Requests the proxy answered itself, by status.", "code"
        )
        self.connections = _gauge("zerodown_client_connections", "Open client connections.")

    def in_order(self) -> tuple[Metric, ...]:
        """Every family, in the order /metrics lists them."""
        return (
            self.requests,
            self.responses,
            self.in_flight,
            self.retries,
            self.ejections,
            self.failures,
            self.duration,
            self.up,
            self.canary_weight,
            self.panic,
            self.refused,
            self.cache,
            self.rejected,
            self.connections,
        )

    def add_target(self, labels: list[str], target: TargetStats) -> None:
        self.requests.add_metric(labels, target.requests)
        for code, n in target.responses.items():
            self.responses.add_metric([*labels, code], n)
        self.in_flight.add_metric(labels, target.in_flight)
        self.retries.add_metric(labels, target.retries)
        self.ejections.add_metric(labels, target.ejections)
        for kind, n in target.failures.items():
            self.failures.add_metric([*labels, kind], n)
        if target.latency.buckets:  # a data plane without a histogram has none to show
            buckets = list(target.latency.buckets.items())
            self.duration.add_metric(labels, buckets, target.latency.sum)
        self.up.add_metric(labels, 1 if target.serving else 0)


class StatsCollector:
    """A prometheus_client collector over one stats document."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def __repr__(self) -> str:
        return f"<StatsCollector services={list(self.stats.services)}>"

    def collect(self) -> Iterator[Metric]:
        """The families with samples; one without any is left out."""
        families = _Families()
        for service, entry in self.stats.services.items():
            families.canary_weight.add_metric([service], entry.canary_weight)
            families.panic.add_metric([service], entry.panic)
            for reason in ("denied", "blocked", "rate_limited"):
                families.refused.add_metric([service, reason], getattr(entry, reason))
            # Every service, as refusals: a series there from the start (0 without `cache`).
            families.cache.add_metric([service, "hit"], entry.cache_hits)
            families.cache.add_metric([service, "miss"], entry.cache_misses)
            for pool, pool_stats in entry.pools.items():
                for address, target in pool_stats.targets.items():
                    families.add_target([service, pool, address, target.version or ""], target)
        for code, n in self.stats.rejected.items():
            families.rejected.add_metric([code], n)
        families.connections.add_metric([], self.stats.connections)
        return (family for family in families.in_order() if family.samples)


def render_prometheus(stats: Stats) -> str:
    """The stats in Prometheus text format."""
    return generate_latest(StatsCollector(stats)).decode()
