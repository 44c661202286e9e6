"""What a driven proxy (HAProxy, nginx) tells zerodown about each request.

The embedded proxy counts every request in its own memory at no cost worth
naming. A driven proxy can only tell zerodown per request by writing a log
line that zerodown reads: work for the proxy (formatting, writing) and for
the controller (reading, counting) on every request, which puts zerodown back
on the data path. So by default ("canary") a driven proxy reports the
requests of a service only while that service has a canary (what the judge
compares), plus every request a service's own rules refuse (rare, and each
must be logged with its rule). "always" reports every request: per-target
counts on nginx and latency histograms on HAProxy at all times, at the cost
bench/README.md measures. HAProxy counts requests and responses itself
either way (`show stat`).
"""

from __future__ import annotations

from typing import Literal

from zerodown.routing import ServiceSpec

__all__ = ["REQUEST_STATS", "RequestStats", "counted"]

RequestStats = Literal["canary", "always"]
REQUEST_STATS: tuple[RequestStats, ...] = ("canary", "always")


def counted(spec: ServiceSpec, mode: RequestStats) -> bool:
    """Whether the proxy reports each request of `spec` to zerodown now."""
    return mode == "always" or bool(spec.canary.targets)
