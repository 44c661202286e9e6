"""The one seam between the control plane and whatever carries traffic.

The orchestrator decides, the data plane obeys a RoutingTable and reports
counters back. A driver that cannot do something raises `Unsupported`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from zerodown.routing import DrainResult, RoutingTable

__all__ = ["DataPlane", "DrainResult"]


class DataPlane(ABC):
    @abstractmethod
    async def apply(self, table: RoutingTable) -> None:
        """Replace the routing table atomically; requests in flight keep their target."""

    @abstractmethod
    def routing(self) -> RoutingTable:
        """The table in force now."""

    @abstractmethod
    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        """Set the target draining and wait until its in-flight work is done or the deadline."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters per service, pool and target, JSON-ready."""

    @abstractmethod
    def prometheus(self) -> str:
        """The same counters in Prometheus text exposition format."""
