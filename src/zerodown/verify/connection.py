"""One keep-alive HTTP/1.1 client connection of the load generator.

A thin asyncio Protocol around httptools' response parser: `send` writes one
request and resolves with its status and `X-Version` once the whole response
has been parsed. One request at a time, no pipelining, so a response always
belongs to the request just written.

How a connection ends decides what a caller may do next, so the errors say it:
`ConnectFailed` (nothing was sent), `ConnectionClosed` (the peer closed it or
reset it before the response was complete; `received` counts the response
bytes that did arrive, `reused` says whether it served a request before),
`BadResponse` (bytes that are not HTTP/1.x).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast

import httptools

VERSION_HEADER = b"x-version"
SET_COOKIE = b"set-cookie"
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class ConnectFailed(Exception):
    """The TCP (or TLS) connection could not be opened."""


class ConnectionClosed(Exception):
    """The peer closed or reset the connection before the response was complete."""

    def __init__(self, received: int, reused: bool) -> None:
        super().__init__(f"connection closed after {received} response bytes")
        self.received = received
        self.reused = reused

    @property
    def before_response(self) -> bool:
        """The keep-alive race: a reused connection the server closed as idle
        just as we wrote to it. Nothing came back, so the request may go again
        on a new connection (RFC 9112 §9.3.1 allows it for idempotent methods;
        browsers do it for any method, and our POSTs only ask for an echo)."""
        return self.reused and self.received == 0


class BadResponse(Exception):
    """The server sent something that is not a valid HTTP/1.x response."""


def tls_context(check_cert: bool = True) -> ssl.SSLContext:
    """The client side of https. `check_cert=False` skips the certificate's name
    and chain: verify's load to the proxy's own TLS listener at 127.0.0.1, whose
    certificate names the site (and may be signed by a CA this host does not
    know); what is measured is the proxy and the app, not the certificate."""
    context = ssl.create_default_context()
    if not check_cert:
        context.check_hostname = False  # before verify_mode: ssl refuses the other order
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])  # the only protocol this client speaks
    return context


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    version: str | None  # the X-Version header, if any
    cookies: tuple[str, ...] = ()  # Set-Cookie values, for a client that keeps a cookie jar
    body: bytes = b""  # the first `keep_body` bytes, when the connection keeps any


class Connection(asyncio.Protocol):
    """A client connection; `closed` once either side ended it."""

    def __init__(self, keep_body: int = 0) -> None:
        self.served = 0
        self._keep_body = keep_body  # bytes of each body kept (the load keeps none)
        self._body = bytearray()
        self._cookies: list[str] = []  # complete responses received
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._received = 0  # bytes of the current response
        self._status = 0
        self._version: str | None = None
        self._framed = False  # Content-Length or Transfer-Encoding seen
        self._headers_done = False
        self._keep_alive = True

    def __repr__(self) -> str:
        return f"<Connection served={self.served} closed={self.closed}>"

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        keep_body: int = 0,
        server_name: str | None = None,
    ) -> Connection:
        """Connect (and shake hands, with `tls`); `server_name` is the TLS SNI
        name (default: `host`), the name a browser would send for the Host."""
        loop = asyncio.get_running_loop()
        sni = server_name if tls is not None else None
        try:
            _, protocol = await loop.create_connection(
                lambda: cls(keep_body), host, port, ssl=tls, server_hostname=sni
            )
        except OSError as exc:  # refused, unreachable, TLS handshake failed, ...
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return protocol

    async def send(self, request: bytes) -> Response:
        """Write `request` and wait for its whole response."""
        if self.closed or self._transport is None:
            raise ConnectionClosed(0, reused=self.served > 0)
        self._waiter = asyncio.get_running_loop().create_future()
        self._received = 0
        self._transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close without waiting: a response may still be on its way, and the
        connection is useless until it is read, so it is cut instead."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # Bytes nobody asked for (say, a 408 a server sends as it closes an idle
        # connection): the stream is out of step, so it cannot carry a request.
        if self._waiter is None:
            self.abort()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(str(exc)))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and not self._framed:
            self._finish()  # a response delimited by the close (RFC 9112 §6.3, rule 8)
        else:
            self._fail(ConnectionClosed(self._received, reused=self.served > 0))

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._status, self._version = 0, None
        self._framed = self._headers_done = False
        self._cookies = []
        self._body.clear()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == VERSION_HEADER:
            self._version = value.decode("latin-1")
        elif name in _FRAMING_HEADERS:
            self._framed = True
        elif name == SET_COOKIE:
            self._cookies.append(value.decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        room = self._keep_body - len(self._body)
        if room > 0:
            self._body += body[:room]

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._finish()
        if not self._keep_alive:  # "Connection: close": the server will not read more
            self.close()

    # -- internals -------------------------------------------------------------

    def _finish(self) -> None:
        self._headers_done = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.served += 1
            cookies = tuple(self._cookies)
            waiter.set_result(Response(self._status, self._version, cookies, bytes(self._body)))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
