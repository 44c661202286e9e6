"""The one seam between the control plane and whatever carries traffic.

The orchestrator decides, the data plane obeys a RoutingTable and reports
counters back. A driver that fails to do what it is told raises DataPlaneError.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from typing import ClassVar, Final

from zerodown.routing import TABLE_FEATURES, DrainResult, RoutingTable, TableFeature
from zerodown.stats import Stats

__all__ = [
    "SHUTDOWN_IDLE_GRACE",
    "DataPlane",
    "DrainResult",
    "ListeningDataPlane",
    "ManagedDataPlane",
]

# At a graceful stop, an idle keep-alive client may still send one request,
# answered with Connection: close, for this long: clients that send all the
# time (the ones that would race the close) all get theirs in.
SHUTDOWN_IDLE_GRACE: Final = 1.0


class DataPlane(ABC):
    # What of a table beyond weighted pools this data plane carries. The
    # orchestrator asks for nothing else; the config refuses keys that need more.
    carries: ClassVar[frozenset[TableFeature]] = TABLE_FEATURES

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
    async def stats(self) -> Stats:
        """Counters per service, pool and target (stats.py)."""

    @abstractmethod
    async def prometheus(self) -> str:
        """The same counters in Prometheus text exposition format (dataplane/prometheus.py)."""


class ListeningDataPlane(DataPlane):
    """A data plane that zerodown runs itself: it owns listening sockets and stops."""

    @abstractmethod
    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        """Listen on "host:port" addresses, or on sockets already listening (a hot restart)."""

    @abstractmethod
    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish up to `timeout`, cut the rest."""

    @property
    @abstractmethod
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens, as (host, port)."""

    @property
    @abstractmethod
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, for a hot restart to hand over."""

    @property
    def pids(self) -> list[int]:
        """The processes that serve traffic (empty: this one)."""
        return []

    async def reload_tls(self) -> None:
        """Read the TLS certificates again: new connections get them, open ones
        keep theirs (SIGHUP, and a hot restart that kept this data plane)."""


class ManagedDataPlane(ListeningDataPlane):
    """A data plane that serves from processes of its own, which outlive the
    controller that drives it (as nginx's workers outlive their master).

    `start` adopts the processes already serving this state_dir, if any, and
    starts them otherwise; `stop` stops them; `detach` lets go of them, serving
    on, for the next controller (a hot restart, or `serve` killed) to adopt.
    """

    @abstractmethod
    async def detach(self) -> None:
        """Stop driving the data plane and leave it serving."""
