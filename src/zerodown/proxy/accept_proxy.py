"""Reading a PROXY protocol header off an accepted socket, before HTTP or TLS
sees it (`[proxy] proxy_protocol`, proxy_protocol.py parses).

Only a peer in `trusted_proxies` is asked for one, and it must send one, as
HAProxy's `accept-proxy` demands: a trusted balancer that sometimes does
not would let anyone behind it pass as the balancer. Anyone else is spoken
to in plain HTTP (or TLS), so a header they send is not HTTP and is refused
as such: no untrusted peer can name its own address.

The header is peeked (MSG_PEEK) and then exactly its length consumed, so
the bytes after it, a TLS ClientHello included, stay in the socket for the
transport the loop builds next. The protocol asks senders to send the
header at once (§2, "the sender must always ensure that the header is sent
at once"); one that arrives in pieces is waited for in PARTIAL_POLL steps
until `timeout` (header_timeout), never in a busy loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from zerodown.proxy.proxy_protocol import MAX_HEADER, ProxyHeader, ProxyHeaderError, parse

__all__ = ["ExpectProxy", "read_header"]

PARTIAL_POLL: Final = 0.005  # seconds between looks at a header that came in pieces


@dataclass(frozen=True, slots=True)
class ExpectProxy:
    """What a listener needs to demand a header: who must send one, the
    protocol to build for the client it names, and how long to wait."""

    trusted: Callable[[str], bool]
    protocol_for: Callable[[str], asyncio.Protocol]  # the client's address -> its protocol
    timeout: float


async def read_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float
) -> ProxyHeader:
    """The header at the start of `sock`, consumed; ProxyHeaderError if there is none
    (malformed, cut short, or not all there within `timeout` seconds)."""
    try:
        async with asyncio.timeout(timeout):
            return await _read(loop, sock)
    except TimeoutError:
        raise ProxyHeaderError(f"no whole PROXY header within {timeout:g}s") from None


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    while True:
        await _readable(loop, sock)
        try:
            data = sock.recv(MAX_HEADER, socket.MSG_PEEK)
        except BlockingIOError:
            continue  # woken with nothing to read after all
        except OSError as exc:  # a reset before the header
            raise ProxyHeaderError(f"the peer left before its PROXY header: {exc}") from None
        if not data:
            raise ProxyHeaderError("the peer closed before its PROXY header ended")
        header = parse(data)
        if header is not None:
            sock.recv(header.length)  # all there: it was peeked
            return header
        await asyncio.sleep(PARTIAL_POLL)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
