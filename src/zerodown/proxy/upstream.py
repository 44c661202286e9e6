"""Connections to targets: one asyncio Protocol per connection around an
httptools response parser, and a keep-alive pool per target.

The pool's bookkeeping is synchronous (as httpcore's is); the only awaits
are the connect itself and a wait for a free slot when max_conns is set.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

import httptools

from zerodown.errors import (
    QueueTimeout,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from zerodown.proxy.timers import Deadline

if TYPE_CHECKING:
    from zerodown.proxy.settings import ProxySettings
    from zerodown.proxy.target import Target


class ResponseSink(Protocol):
    """What an UpstreamConnection reports to the exchange that is using it."""

    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upgraded(self, rest: bytes) -> None: ...
    def on_upstream_lost(self, exc: Exception) -> None: ...
    def flush_response(self) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_head_limit",
        "_head_size",
        "_headers",
        "_idle",
        "_in_head",
        "_loop",
        "_parser",
        "_raw_head",
        "_reason",
        "_skip_body",
        "_upgrade",
        "pool",
        "reused",
        "sink",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.reused = False
        self.tunnel = False  # after a 101, bytes pass through unparsed
        # Made by the protocol factory of create_connection: in the loop.
        self._loop = asyncio.get_running_loop()
        self._idle = Deadline(self._loop)
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._skip_body = False
        self._upgrade = False  # the request asked to switch protocols
        self._in_head = False  # reading a response head
        self._head_size = 0  # its fields' bytes so far, bounded by max_response_header_size
        self._raw_head = 0  # its raw bytes, while it spans reads
        self._head_limit = pool.settings.max_response_header_size

    def __repr__(self) -> str:
        state = "busy" if self.sink is not None else "idle"
        return f"<UpstreamConnection {self.pool.target.address} {state} reused={self.reused}>"

    # -- used by the exchange ------------------------------------------------

    def begin(self, sink: ResponseSink, *, head_request: bool, upgrade: bool = False) -> None:
        """Start one request/response cycle on this connection."""
        self.sink = sink
        self._skip_body = head_request
        self._upgrade = upgrade
        self._headers = []
        self._in_head = True
        self._head_size = self._raw_head = 0

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write_eof(self) -> None:
        """Half-close towards the target (a tunnel whose client is done sending)."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            assert self.sink is not None
            self.sink.on_response_body(data)
            self.sink.flush_response()
            return
        if self.sink is None:
            # Bytes on an idle connection: the app broke protocol. Never reuse it.
            self.pool.discard(self)
            self.abort()
            return
        sink = self.sink  # kept: completing the response detaches it
        if self._in_head:
            self._raw_head += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._raw_head > self._head_limit:
                # httptools gathers a header that spans reads before on_header
                # sees it: bound it by raw bytes, or one endless line grows forever.
                self._head_too_large()
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except UpstreamProtocolError as exc:
            self._fail(exc)
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            if isinstance(context, UpstreamProtocolError):
                self._fail(context)
            else:
                self._fail(UpstreamProtocolError(f"invalid response: {exc}"))
        except httptools.HttpParserError as exc:
            # Translate at the edge: the exchange only knows ProxyErrors and
            # socket errors, and a raw parser error would escape it, leaving the
            # client with no answer (or, mid-body, a kept-alive connection whose
            # next response would be read as the rest of this one).
            reason = f"invalid response from {self.pool.target.address}: {exc}"
            self._fail(UpstreamProtocolError(reason))
        finally:
            if sink is not None:
                sink.flush_response()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.cancel()
        self.pool.discard(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_upstream_lost(exc or ConnectionResetError("upstream closed the connection"))

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_request_body()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_request_body()

    # -- httptools callbacks -------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer (RFC 9112 §7.1.2): never forwarded, never a header
        # Counted per field too: a head that arrives in one read is parsed
        # whole before data_received can look at its raw size.
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._head_limit:
            self._head_too_large()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim responses (100, 103) are not forwarded: the proxy answers
            # Expect itself and strips it upstream, so they carry nothing we need.
            self._headers, self._reason = [], b""
            self._head_size = self._raw_head = 0
            return
        if status == 101 and not self._upgrade:
            # RFC 9110 §15.2.2: a server may switch only when asked. Tunnelling
            # an unasked switch would hand the client whatever bytes follow
            # (a forged Set-Cookie, another client's response).
            raise UpstreamProtocolError(
                f"{self.pool.target.address} answered 101 to a request that did not ask to upgrade"
            )
        self._in_head = False
        assert self.sink is not None
        headers, reason = self._headers, self._reason
        self._headers, self._reason = [], b""
        self.sink.on_response_head(status, reason, headers, self._parser.should_keep_alive())
        if self._skip_body and self.sink is not None:
            # A HEAD response has no body whatever its Content-Length says;
            # httptools cannot be told so, so finish here and use a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        # 1xx heads are not the response; a 101 is followed by HttpParserUpgrade
        # and becomes a tunnel instead of completing.
        if 100 <= self._parser.get_status_code() < 200 or self.sink is None:
            return
        self._complete()

    # -- internals -----------------------------------------------------------

    def _complete(self) -> None:
        sink, self.sink = self.sink, None
        assert sink is not None
        sink.on_response_complete()

    def _head_too_large(self) -> NoReturn:
        raise UpstreamProtocolError(
            f"response header from {self.pool.target.address} larger than "
            f"max_response_header_size ({self._head_limit} bytes)"
        )

    def _upgraded(self, rest: bytes) -> None:
        self.tunnel = True
        assert self.sink is not None
        self.sink.on_upgraded(rest)

    def _fail(self, exc: Exception) -> None:
        sink, self.sink = self.sink, None
        self.pool.discard(self)
        self.abort()
        if sink is not None:
            sink.on_upstream_lost(exc)

    def start_idle_timer(self, timeout: float) -> None:
        self._idle.set(self._loop.time() + timeout, self._idle_expired)

    def stop_idle_timer(self) -> None:
        self._idle.clear()

    def _idle_expired(self) -> None:
        self.pool.discard(self)
        self.close()


class ConnectionPool:
    """Keep-alive connections to one target, and its max-connections slots."""

    def __init__(self, target: Target, settings: ProxySettings) -> None:
        self.target = target
        self.settings = settings
        self.idle: collections.deque[UpstreamConnection] = collections.deque()
        self.busy: set[UpstreamConnection] = set()
        self.connecting = 0
        self.closed = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.opened = 0  # connections opened over the pool's life, for stats and tests

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.target.address} idle={len(self.idle)} "
            f"busy={len(self.busy)} connecting={self.connecting}>"
        )

    @property
    def full(self) -> bool:
        limit = self.settings.max_conns_per_target
        return limit > 0 and len(self.busy) + self.connecting >= limit

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection for one request: the most recently used idle one, or a new one."""
        if self.full:
            await self._wait_for_slot()
        if not fresh:
            conn = self._take_idle()
            if conn is not None:
                return conn
        return await self._connect()

    def take_idle_now(self) -> UpstreamConnection | None:
        """acquire() without the await, when an idle connection and a slot are free."""
        return None if self.full else self._take_idle()

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        self.busy.discard(conn)
        self._wake_waiter()
        settings = self.settings
        if (
            not reusable
            or self.closed
            or conn.transport is None
            or conn.transport.is_closing()
            or len(self.idle) >= settings.upstream_max_idle
            or self.target.state in ("draining", "gone")
        ):
            conn.close()
            return
        conn.resume_reading()
        conn.reused = True
        conn.start_idle_timer(settings.upstream_idle_timeout)
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Forget a connection that closed or broke (called from the protocol)."""
        if conn in self.busy:
            self.busy.discard(conn)
            self._wake_waiter()
        if conn in self.idle:
            self.idle.remove(conn)

    def close_idle(self) -> None:
        while self.idle:
            conn = self.idle.pop()
            conn.stop_idle_timer()
            conn.close()

    def close(self) -> None:
        """The target left the table: close idle connections now, busy ones on release."""
        self.closed = True
        self.close_idle()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    QueueTimeout("the target left the table while the request waited for it")
                )

    def _take_idle(self) -> UpstreamConnection | None:
        # LIFO: the warmest connection is the least likely to be closed by the app.
        while self.idle:
            conn = self.idle.pop()
            conn.stop_idle_timer()
            if conn.transport is not None and not conn.transport.is_closing():
                self.busy.add(conn)
                return conn
        return None

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.target.host, self.target.port
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.target.address} timed out") from None
        except OSError as exc:
            raise UpstreamConnectError(f"connect to {self.target.address}: {exc}") from exc
        finally:
            self.connecting -= 1
        self.opened += 1
        self.busy.add(conn)
        return conn

    async def _wait_for_slot(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout
        while self.full:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                # No address in the message: it is the body of the client's 503.
                raise QueueTimeout(
                    f"target at max connections ({self.settings.max_conns_per_target}) "
                    f"for the whole queue timeout ({self.settings.queue_timeout:g}s)"
                ) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
