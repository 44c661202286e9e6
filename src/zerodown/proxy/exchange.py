"""One request/response cycle through the proxy, with its retries.

An Exchange is created when a request head has been read. It picks a pool
and a target, sends the request, streams the response back and decides,
after a failure, whether another attempt is safe (retry.may_retry). Its life
is a Phase (phase.py) moved only through `advance`; what to do on a failure,
whether an upstream connection may be reused and what the read watchdog
waits for are read from the phase. The request body (request_body.py) and
the client-facing framing (response.py) are objects of their own; the
client connection and the routing table are seen through narrow protocols
(client_side.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from zerodown.errors import (
    BadRequest,
    ProxyError,
    UpstreamConnectError,
    UpstreamReset,
    UpstreamTimeout,
)
from zerodown.proxy import http
from zerodown.proxy.attempt import NOT_SENT, AttemptFailed, Cut, as_proxy_error, failure_kind
from zerodown.proxy.phase import ANSWERING, ATTEMPTING, Phase, advance
from zerodown.proxy.request_body import RequestBody
from zerodown.proxy.response import (
    LocalAnswer,
    Maintenance,
    ResponseStream,
    client_head,
    error_answer,
    framing,
)
from zerodown.proxy.retry import Attempt, is_keepalive_race
from zerodown.proxy.retrying import forward

if TYPE_CHECKING:
    from zerodown.proxy.client_side import ClientSide, Routes
    from zerodown.proxy.service import Service
    from zerodown.proxy.target import Target
    from zerodown.proxy.upstream import UpstreamConnection

__all__ = ["Exchange", "Maintenance"]

# Statuses after which the client connection is closed: the request stream
# itself was bad, so nothing after it can be parsed with confidence.
CLOSING_STATUSES: Final = frozenset({400, 408, 413, 414, 417, 431, 501})


class Exchange:
    __slots__ = (
        "_waiter",
        "body",
        "client",
        "client_ip",
        "conn",
        "cut",
        "error",
        "failure",
        "head",
        "keep_alive",
        "loop",
        "path",
        "phase",
        "request_id",
        "response",
        "routes",
        "service",
        "set_cookie",
        "started",
        "status",
        "target",
        "task",
    )

    def __init__(
        self,
        client: ClientSide,
        routes: Routes,
        head: http.RequestHead,
        service: Service | None,
        path: bytes,
        error: ProxyError | None = None,
    ) -> None:
        self.client = client
        self.routes = routes
        self.head = head
        self.service = service
        self.path = path  # what the target sees: origin-form, prefix stripped if asked
        self.error = error  # set when the request is refused before it is sent anywhere
        self.request_id = head.request_id or http.new_request_id()
        # Who the client is: the peer, or behind a trusted proxy whom it names.
        self.client_ip = (
            client.real_client_ip(head) if client.forwarded.trusted else client.client_ip
        )
        self.loop = client.loop
        self.phase = Phase.QUEUED
        self.cut: Cut | None = None
        self.body = RequestBody(head, client.settings.max_body_size) if head.has_body else None
        self.response = ResponseStream(client)
        self.keep_alive = head.keep_alive  # what the response head announces
        self.failure: ProxyError | None = None  # why the proxy answered itself, for the log
        self.task: asyncio.Task[None] | None = None
        self.target: Target | None = None  # the target of the latest attempt
        self.conn: UpstreamConnection | None = None
        self.status = 0
        self.started = 0.0
        self.set_cookie: bytes | None = None
        self._waiter: asyncio.Future[None] | None = None  # the attempt's end

    def __repr__(self) -> str:
        target = self.target.address if self.target else None
        return (
            f"<Exchange {self.head.method.decode()} {self.path!r} "
            f"{self.phase.value} target={target}>"
        )

    @property
    def body_done(self) -> bool:
        """The client's request was read in full."""
        return self.body is None or self.body.done

    @property
    def attempting(self) -> Target | None:
        """The target of the attempt under way, if any (drains count it in flight)."""
        return self.target if self.phase in ATTEMPTING else None

    @property
    def tunnelled(self) -> bool:
        return self.phase is Phase.TUNNEL

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        self.started = self.loop.time()
        try:
            if self.error is not None:
                raise self.error
            assert self.service is not None
            service = self._current(self.service)
            if service.guard is not None:  # the one check before anything reaches the app
                refusal = service.guard.check(self.client_ip, self.head, self.path)
                if refusal is not None:
                    raise refusal
            self._move(Phase.ROUTING)
            await forward(self, service)
        except ProxyError as exc:
            self._fail(self.error if self.cut is Cut.CLIENT and self.error is not None else exc)
        finally:
            self.client.watchdog.stop()
            self.client.exchange_done(self)

    def _move(self, phase: Phase) -> None:
        self.phase = advance(self.phase, phase)

    def _current(self, service: Service) -> Service:
        """The service as the table in force now has it.

        The head was routed when it was parsed, but this exchange may start a
        loop iteration (or, pipelined, a response) later; tables applied in
        between must count, or it would pick from pools that no longer exist.
        """
        current = self.routes.services.get(service.name)
        return current if current is not None else service

    def _fail(self, exc: ProxyError) -> None:
        """Tell the client: a status if nothing was sent yet, else cut the connection."""
        answering = self.phase in ANSWERING
        self._move(Phase.FAILED)
        self.failure = exc
        if isinstance(exc, LocalAnswer):  # a page the proxy serves: the stream is fine
            self.status = exc.status
            self.client.write(
                error_answer(exc, self.request_id, close=False, head_only=self._head_only)
            )
            return
        target = self.target
        if target is not None and target.metrics is not None and self._target_failed(exc):
            target.metrics.fail(failure_kind(exc))
        if answering:
            self.keep_alive = False
            self.client.abort()
            return
        # After a protocol error the stream cannot be trusted; after our own
        # 404/502/503/504 to a fully read request it can, as nginx keeps it.
        self.keep_alive = (
            self.keep_alive
            and self.body_done
            and self.cut is not Cut.CLIENT
            and exc.status not in CLOSING_STATUSES
            and self.client.keep_alive_allowed(self)
        )
        self.status = exc.status
        self.client.write(
            error_answer(exc, self.request_id, close=not self.keep_alive, head_only=self._head_only)
        )

    @property
    def _head_only(self) -> bool:
        return self.head.method == b"HEAD"

    def _target_failed(self, exc: ProxyError) -> bool:
        return self.cut is None and not isinstance(exc, BadRequest)

    @property
    def replayable(self) -> bool:
        """May the request be sent again (no body, or all of it is still held)?"""
        return self.body is None or self.body.replayable

    def retrying(self) -> None:
        """The retry loop moves on to another target."""
        self._move(Phase.ROUTING)

    # -- one attempt -----------------------------------------------------------

    async def attempt(self, service: Service, target: Target, *, fresh: bool) -> None:
        """Send the request to `target` and forward its response; AttemptFailed if it fails."""
        assert target.connections is not None
        assert target.metrics is not None
        self._move(Phase.CONNECTING)
        self.target = target
        target.in_flight += 1
        target.metrics.request()
        started = self.loop.time()
        try:
            conn = None if fresh else self._reuse_idle(target)
            if conn is None:
                conn = await self._connect(target, fresh)
            if self.cut is Cut.CLIENT and self.error is not None:
                raise self.error
            if self.cut is Cut.DRAIN:
                # Cut at a drain deadline while it waited for a connection slot
                # (or was connecting): the draining target must not get it now.
                error = UpstreamTimeout("target drained before the request was sent")
                raise AttemptFailed(error, NOT_SENT, False)
            self._send_request(conn)
            await self._await_response(conn)
        finally:
            target.in_flight -= 1
            self._release(target)
            if target.in_flight == 0 and target.state != "ready":
                self.routes.target_idle(target)
        elapsed = self.loop.time() - started
        target.record_response_time(elapsed)
        target.metrics.response(self.status, elapsed)
        service.observe(target, ok=self.status < 500)

    def _reuse_idle(self, target: Target) -> UpstreamConnection | None:
        """An idle keep-alive connection, taken without an await (the common case)."""
        assert target.connections is not None
        conn = target.connections.take_idle_now()
        if conn is not None:
            self._use(conn)
        return conn

    async def _connect(self, target: Target, fresh: bool) -> UpstreamConnection:
        assert target.connections is not None
        try:
            conn = await target.connections.acquire(fresh=fresh)
        except (UpstreamConnectError, UpstreamTimeout) as exc:
            raise AttemptFailed(exc, NOT_SENT, True) from None
        except ProxyError as exc:  # queue timeout: the target is busy, not broken
            raise AttemptFailed(exc, NOT_SENT, False) from None
        self._use(conn)
        return conn

    def _use(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.begin(
            self, head_request=self.head.method == b"HEAD", upgrade=self.head.upgrade is not None
        )

    def _send_request(self, conn: UpstreamConnection) -> None:
        body = self.body
        if body is not None and body.continue_due():
            self.client.write(http.CONTINUE_100)
        parts = http.upstream_head(self.head, self.path, self.client.forwarded, self.request_id)
        if body is not None:
            # A small body usually arrived in the same read as the head: one
            # write (one syscall, one segment) carries both.
            parts += body.replay()
            parts += body.take()
        conn.writelines(parts)
        self._move(Phase.SENT)
        self.client.resume_reading("body")

    async def _await_response(self, conn: UpstreamConnection) -> None:
        """Until the response is forwarded in full (or the tunnel ends)."""
        self._waiter = waiter = self.loop.create_future()
        # The watchdog bounds the wait for the head as well as the gaps in
        # the body: one lazily re-armed timer instead of a timeout per phase.
        self.client.watchdog.watch(self)
        try:
            await waiter
        except (ConnectionError, OSError, ProxyError) as exc:
            raise self._attempt_failed(as_proxy_error(exc), conn) from None

    def _attempt_failed(self, error: ProxyError, conn: UpstreamConnection) -> AttemptFailed:
        attempt = Attempt(
            sent=True,
            responded=self.phase in ANSWERING,
            reused=conn.reused,
            closed=isinstance(error, UpstreamReset),
        )
        # A cut from outside is never the target's fault, nor is the race.
        target_fault = self.cut is None and not is_keepalive_race(attempt)
        return AttemptFailed(error, attempt, target_fault)

    def _release(self, target: Target) -> None:
        conn, self.conn = self.conn, None
        if conn is None or target.connections is None:
            return
        clean = self.phase is Phase.DONE
        # A connection that was asked to upgrade is never reused, even when the
        # target declined: it may have switched anyway, or read on as if it had.
        reusable = (
            clean
            and self.body_done
            and self.response.upstream_keep_alive
            and self.head.upgrade is None
        )
        if not clean:
            # Detach first: this attempt is over, so the close must not report
            # to us (a waiter nobody awaits would log "exception never retrieved").
            conn.sink = None
            conn.abort()
        target.connections.release(conn, reusable=reusable)

    # -- request body (called by the client connection) ------------------------

    def feed_body(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        over_high_water = body.feed(data)
        # Once an attempt's head is on the wire, its body follows as it comes.
        if self.conn is not None and self.phase is not Phase.CONNECTING:
            self._flush_body()
        elif over_high_water:
            self.client.pause_reading("body")

    def end_body(self) -> None:
        if self.body is None:
            return
        self.body.end()
        if self.conn is not None and self.phase is not Phase.CONNECTING:
            self._flush_body()

    def _flush_body(self) -> None:
        assert self.conn is not None
        assert self.body is not None
        parts = self.body.take()
        if parts:
            self.conn.writelines(parts)
        self.client.resume_reading("body")

    def body_error(self, exc: BadRequest) -> None:
        """The client's body broke the protocol mid-stream: never forward the rest."""
        self.keep_alive = False
        self.cut = Cut.CLIENT
        self.error = exc
        if self.body is not None:
            self.body.discard()
        self._settle(exc)
        if self.conn is not None:
            self.conn.abort()

    # -- ResponseSink (called by the upstream connection) ----------------------

    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self._move(Phase.STREAMING)
        self.status = status
        self.client.watchdog.last_read = self.loop.time()
        head = self.head
        names = [name.lower() for name, _ in headers]  # lowered once for both passes
        framed = framing(head.method, head.version, status, headers, names)
        # What the head announces is what exchange_done will do.
        self.keep_alive = (
            self.keep_alive and not framed.client_close and self.client.keep_alive_allowed(self)
        )
        parts = client_head(
            head.version,
            status,
            reason,
            headers,
            names,
            framed,
            keep_alive=self.keep_alive,
            request_id=self.request_id,
            set_cookie=self.set_cookie,
        )
        self.response.head(parts, framed, keep_alive)

    def on_response_body(self, data: bytes) -> None:
        self.client.watchdog.last_read = self.loop.time()
        self.response.body(data)

    def on_response_complete(self) -> None:
        self.response.end()
        self._move(Phase.DONE)
        self._settle(None)

    def flush_response(self) -> None:
        self.response.flush()

    def on_upgraded(self, rest: bytes) -> None:
        self._move(Phase.TUNNEL)
        self.keep_alive = False
        self.client.watchdog.stop()  # a tunnel may stay silent for as long as it likes
        self.response.flush()
        self.client.become_tunnel(self)
        if rest:
            self.client.write(rest)

    def on_upstream_lost(self, exc: Exception) -> None:
        if self._waiter is None or self._waiter.done():
            return  # the attempt's end was decided already (a cut, the watchdog)
        if self.phase is Phase.TUNNEL:
            self.client.close()
            self._move(Phase.DONE)
            self._settle(None)
            return
        if self.phase is Phase.STREAMING and self.response.framing.upstream_close:
            # RFC 9112 §6.3 item 8: a body with no length ends with the close.
            self.response.upstream_keep_alive = False
            self.on_response_complete()
            return
        self._settle(exc if isinstance(exc, Exception) else ConnectionResetError())

    def pause_request_body(self) -> None:
        self.client.pause_reading("upstream")

    def resume_request_body(self) -> None:
        self.client.resume_reading("upstream")

    # -- client side events ----------------------------------------------------

    def client_write_paused(self, paused: bool) -> None:
        """Back-pressure: a slow client slows the upstream read, not our memory."""
        if self.conn is not None:
            if paused:
                self.conn.pause_reading()
            else:
                self.conn.resume_reading()

    def tunnel_data(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.write(data)

    def tunnel_eof(self) -> None:
        if self.conn is not None:
            self.conn.write_eof()

    def client_lost(self) -> None:
        if self.conn is not None:
            self.conn.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def cancel_for_drain(self) -> None:
        """The drain deadline passed: end this exchange now (504 if nothing was sent yet)."""
        self.cut = Cut.DRAIN
        if self.target is not None and self.target.metrics is not None:
            self.target.metrics.fail("cancelled")
        if self.phase is Phase.TUNNEL:
            self.client.close()
        self._settle(UpstreamTimeout("target drained before the response finished"))
        if self.conn is not None:
            self.conn.abort()

    # -- internals -------------------------------------------------------------

    def _settle(self, error: Exception | None) -> None:
        """End the attempt's wait: in success (None) or with `error`."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

    def read_timed_out(self) -> None:
        """The watchdog's verdict: no byte from the target for read_timeout."""
        self._settle(UpstreamTimeout("upstream read timed out"))
        if self.conn is not None:
            self.conn.abort()
