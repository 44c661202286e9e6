"""The embedded data plane: zerodown's own proxy, in this process (`workers = 1`).

`local_dataplane` picks it, or the multi-worker one for `workers` > 1.
"""

from __future__ import annotations

import socket

from zerodown.dataplane.base import SHUTDOWN_IDLE_GRACE, DrainResult, ListeningDataPlane
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable
from zerodown.stats import Stats


class EmbeddedDataPlane(ListeningDataPlane):
    def __init__(self, settings: ProxySettings, table: RoutingTable | None = None) -> None:
        self.server = ProxyServer(settings, table)

    def __repr__(self) -> str:
        return f"<EmbeddedDataPlane {self.server!r}>"

    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        await self.server.start(listen)

    async def stop(self, timeout: float | None = None) -> None:
        await self.server.stop(timeout, idle_grace=SHUTDOWN_IDLE_GRACE)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.server.addresses

    @property
    def sockets(self) -> list[socket.socket]:
        return self.server.sockets

    async def reload_tls(self) -> None:
        self.server.reload_tls()

    async def apply(self, table: RoutingTable) -> None:
        await self.server.apply(table)

    def routing(self) -> RoutingTable:
        return self.server.routing()

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        return await self.server.drain(service, address, timeout)

    async def stats(self) -> Stats:
        return self.server.stats()

    async def prometheus(self) -> str:
        return self.server.prometheus()
