"""Targets and counters for the stats tests: a target with metrics, and
metrics that counted given answers."""

from __future__ import annotations

from zerodown.proxy.metrics import TargetMetrics
from zerodown.proxy.target import Target


def metrics(statuses: list[int], seconds: float) -> TargetMetrics:
    """Counters that saw one request per status, each answered in `seconds`."""
    m = TargetMetrics()
    for status in statuses:
        m.request()
        m.response(status, seconds)
    return m


def target(address: str, version: str | None = "v1", weight: int = 1) -> Target:
    """A ready target that counts (no traffic yet)."""
    t = Target(address, weight=weight, version=version)
    t.set_state("ready")
    t.metrics = TargetMetrics()
    return t
