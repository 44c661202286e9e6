"""What an exchange needs from the world around it, and nothing more.

`ClientSide` is the client connection as an exchange uses it (writes,
reading paused and resumed, the connection's end, who the peer is, the
settings it reads); `Routes` is the routing table in force. ClientConnection
and ProxyServer implement them; a test, or another front end (HTTP/2, a
unix socket), can implement them without the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from zerodown.proxy import http
    from zerodown.proxy.exchange import Exchange
    from zerodown.proxy.service import Service
    from zerodown.proxy.settings import ProxySettings
    from zerodown.proxy.target import Target
    from zerodown.proxy.watchdog import ReadWatchdog


class ClientSide(Protocol):
    """The client connection, as the exchange it is answering sees it."""

    loop: asyncio.AbstractEventLoop
    settings: ProxySettings  # max_body_size is read per exchange
    client_ip: str  # the peer's address
    forwarded: http.Forwarded  # what X-Forwarded-* the target gets, and whether the peer is trusted
    # The upstream read timeout of the exchange being answered: one per
    # connection, since only the first exchange of its queue runs.
    watchdog: ReadWatchdog

    def real_client_ip(self, head: http.RequestHead) -> str:
        """The client a trusted peer forwards for."""

    def write(self, data: bytes) -> None: ...
    def write_lines(self, parts: list[bytes]) -> None: ...
    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...
    def close(self) -> None:
        """Close after what was written is flushed."""

    def abort(self) -> None:
        """Cut the connection now: a response under way cannot be finished."""

    def keep_alive_allowed(self, exchange: Exchange) -> bool:
        """May the connection stay open after `exchange`'s response?"""

    def become_tunnel(self, exchange: Exchange) -> None:
        """The target switched protocols: bytes from the client go to `exchange` unparsed."""

    def exchange_done(self, exchange: Exchange) -> None:
        """`exchange` has answered (or failed): log it, start the next one or close."""


class Routes(Protocol):
    """The routing table in force, as an exchange running under it sees it."""

    @property
    def services(self) -> Mapping[str, Service]: ...
    @property
    def stopping(self) -> bool: ...

    async def wait_for_target(self, name: str, deadline: float) -> Service | None:
        """Service `name` once it has a target that can serve, or None at the deadline."""

    def target_idle(self, target: Target) -> None:
        """A request on `target` ended (a drain may be waiting for its last one)."""
