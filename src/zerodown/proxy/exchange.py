"""One request/response cycle through the proxy, with its retries.

An Exchange is created when a request head has been read. It picks a pool
and a target, sends the request, streams the response back and decides,
after a failure, whether another attempt is safe (retry.may_retry). Bodies
are streamed both ways with back-pressure; a request body is also kept for
replay while it is small, so an idempotent request can be retried after its
bytes were sent.
"""

from __future__ import annotations

import asyncio
import collections
import os
from itertools import count
from typing import TYPE_CHECKING, Final

from zerodown.errors import (
    BadRequest,
    HoldTimeout,
    NoHealthyTarget,
    ProxyError,
    ShuttingDown,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from zerodown.proxy import http
from zerodown.proxy.retry import Attempt, is_keepalive_race, may_retry

if TYPE_CHECKING:
    from zerodown.proxy.client import ClientConnection
    from zerodown.proxy.service import Choice, Service
    from zerodown.proxy.target import Target
    from zerodown.proxy.upstream import UpstreamConnection

# A request body up to this size is kept after sending, so an idempotent
# request can be replayed on another target; larger ones are not retried.
REPLAY_LIMIT: Final = 64 * 1024
# Statuses after which the client connection is closed: the request stream
# itself was bad, so nothing after it can be parsed with confidence.
CLOSING_STATUSES: Final = frozenset({400, 408, 413, 414, 417, 431, 501})
# Buffered request body before we stop reading from the client.
BODY_HIGH_WATER: Final = 64 * 1024

_ID_PREFIX: Final = os.urandom(6).hex().encode()
_ids = count(1)


def new_request_id() -> bytes:
    """Unique per process run: a random prefix and a counter (cheaper than uuid4)."""
    return b"%s-%x" % (_ID_PREFIX, next(_ids))


class AttemptFailed(Exception):
    def __init__(self, error: ProxyError, attempt: Attempt, target_fault: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempt = attempt
        self.target_fault = target_fault  # counts against the target's passive health


class Exchange:
    # Why the proxy answered (or cut) this request itself, for the access log;
    # a class default so a request that goes well stores nothing.
    failure: ProxyError | None = None

    def __init__(
        self,
        client: ClientConnection,
        head: http.RequestHead,
        service: Service | None,
        path: bytes,
        error: ProxyError | None = None,
    ) -> None:
        self.client = client
        self.head = head
        self.service = service
        self.path = path  # what the target sees: origin-form, prefix stripped if asked
        self.error = error  # set when the request is refused before it is sent anywhere
        self.request_id = head.request_id or new_request_id()
        # Who the client is: the peer, or behind a trusted proxy whom it names.
        self.client_ip = (
            client.real_client_ip(head) if client.forwarded.trusted else client.client_ip
        )
        self.loop = client.loop
        self.task: asyncio.Task[None] | None = None
        # request body
        self.body_done = not head.has_body
        self.body_received = 0
        self.pending: collections.deque[bytes] = collections.deque()
        self.pending_size = 0
        self.replay: list[bytes] | None = [] if head.idempotent else None
        self.replay_size = 0
        self.continue_sent = False
        # the attempt in progress
        self.target: Target | None = None
        self.conn: UpstreamConnection | None = None
        self.sent = False
        self.responded = False  # any byte of the response reached the client
        self.keep_alive = head.keep_alive
        self.upgraded = False
        self.attempting: Target | None = None  # the target of the attempt under way, if any
        self.drain_cancelled = False
        self.aborted = False  # the client broke protocol mid-body: never retry, answer `error`
        self.status = 0
        self.started = 0.0
        self._head_waiter: asyncio.Future[None] | None = None
        self._done_waiter: asyncio.Future[None] | None = None
        self._rechunk = False
        self._close_delimited = (
            False  # the upstream body ends when it closes (no length, not chunked)
        )
        self._upstream_keep_alive = True
        self._last_read = 0.0
        self._watching = False  # this exchange has the client connection's watchdog
        self.set_cookie: bytes | None = None
        # Response bytes gathered during one upstream read, written to the
        # client in one writelines() (one syscall for head + body + end).
        self._out: list[bytes] = []

    def __repr__(self) -> str:
        target = self.target.address if self.target else None
        return f"<Exchange {self.head.method.decode()} {self.path!r} target={target}>"

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        self.started = self.loop.time()
        try:
            if self.error is not None:
                raise self.error
            assert self.service is not None
            await self._proxy(self._current(self.service))
        except ProxyError as exc:
            self._fail(self.error if self.aborted and self.error is not None else exc)
        finally:
            self._stop_watchdog()
            self.client.exchange_done(self)

    def _current(self, service: Service) -> Service:
        """The service as the table in force now has it.

        The head was routed when it was parsed, but this exchange may start a
        loop iteration (or, pipelined, a response) later; tables applied in
        between must count, or it would pick from pools that no longer exist.
        """
        current = self.client.server.services.get(service.name)
        return current if current is not None else service

    def _fail(self, exc: ProxyError) -> None:
        """Tell the client: a status if nothing was sent yet, else cut the connection."""
        self.failure = exc
        if isinstance(exc, Maintenance):
            self.status = exc.status
            self.client.write(exc.response(self.request_id, head_only=self._head_only))
            self.responded = True
            return
        target = self.target
        if target is not None and target.metrics is not None and self._target_failed(exc):
            target.metrics.fail(_failure_kind(exc))
        if self.responded:
            self.keep_alive = False
            self.client.abort()
            return
        # After a protocol error the stream cannot be trusted; after our own
        # 404/502/503/504 to a fully read request it can, as nginx keeps it.
        self.keep_alive = (
            self.keep_alive
            and self.body_done
            and not self.aborted
            and exc.status not in CLOSING_STATUSES
            and self.client.keep_alive_allowed(self)
        )
        self.status = exc.status
        # Our own 5xx say which failure they are; a 503's body also says why
        # (its reasons name services, never an address of the network behind).
        response = http.error_response(
            exc.status,
            request_id=self.request_id,
            close=not self.keep_alive,
            head_only=self._head_only,
            kind=exc.kind.encode() if exc.status >= 500 else None,
            detail=str(exc) if exc.status == 503 else None,
        )
        self.client.write(response)
        self.responded = True

    @property
    def _head_only(self) -> bool:
        return self.head.method == b"HEAD"

    def _target_failed(self, exc: ProxyError) -> bool:
        return not (self.aborted or self.drain_cancelled or isinstance(exc, BadRequest))

    # -- choosing targets and retrying ---------------------------------------

    async def _proxy(self, service: Service) -> None:
        choice = service.choose(self.head, self.client_ip, self.path)
        self.set_cookie = choice.set_cookie
        deadline = self.loop.time() + service.spec.retry_timeout
        tried: list[Target] = []
        raced = False
        last_error: ProxyError | None = None
        service.budget.record_request(self.loop.time())
        target = self._pick(service, choice, tried)
        while True:
            if target is None and not tried and service.spec.hold is not None:
                service, choice = await self._hold(service)
                target = self._pick(service, choice, tried)
                continue
            if target is None:
                # Every candidate failed: the client learns why the last one did.
                raise last_error or NoHealthyTarget(service.unavailable_reason())
            try:
                await self._attempt(service, target, fresh=raced)
                return
            except AttemptFailed as failure:
                if failure.target_fault:
                    service.observe(target, ok=False)
                if self._may_race_retry(failure, raced):
                    raced = True  # the keep-alive race: once more, same target, new connection
                    continue
                tried.append(target)
                last_error = failure.error
                if not self._may_retry(service, failure, tried, deadline):
                    raise failure.error from None
                failed, target = target, self._pick(service, choice, tried)
                # Spend the budget and count a retry only when there is a next
                # target: with none left nothing is retried, and a phantom retry
                # would both inflate the stats and starve real retries of budget.
                if target is None or not service.budget.try_spend(self.loop.time()):
                    raise failure.error from None
                if failed.metrics is not None:
                    failed.metrics.retry()
                raced = False

    async def _hold(self, service: Service) -> tuple[Service, Choice]:
        """Nothing can serve now: wait for a target (recreate) or show maintenance."""
        hold = service.spec.hold
        assert hold is not None
        if hold.maintenance_html is not None:
            raise Maintenance(hold.maintenance_html, hold.retry_after)
        server = self.client.server
        found = await server.wait_for_target(service.name, self.loop.time() + hold.timeout)
        if found is None and server.stopping:
            raise ShuttingDown(f"no target for {service.name}: the proxy is shutting down")
        if found is None:
            raise HoldTimeout(
                f"no target for {service.name} within the hold timeout ({hold.timeout:g}s)"
            )
        return found, found.choose(self.head, self.client_ip, self.path)

    def _pick(self, service: Service, choice: Choice, tried: list[Target]) -> Target | None:
        target = choice.pool.balancer.pick(choice.key, tried)
        if target is None:
            # Prefer a target with a free connection slot; queue only when all are full.
            fallback = service.fallback(choice.pool)
            if fallback is not None:
                target = fallback.balancer.pick(choice.key, tried)
            if target is None:
                target = service.panic_pick(choice.pool, tried)
                if target is not None and target.metrics is not None:
                    target.metrics.panic()
        return target

    def _may_race_retry(self, failure: AttemptFailed, raced: bool) -> bool:
        return (
            not raced
            and not self.drain_cancelled
            and not self.aborted
            and is_keepalive_race(failure.attempt)
            and may_retry(
                failure.attempt, idempotent=self.head.idempotent, replayable=self._replayable
            )
        )

    def _may_retry(
        self, service: Service, failure: AttemptFailed, tried: list[Target], deadline: float
    ) -> bool:
        now = self.loop.time()
        return (
            not self.drain_cancelled
            and not self.aborted
            and may_retry(
                failure.attempt, idempotent=self.head.idempotent, replayable=self._replayable
            )
            and len(tried) < service.spec.tries
            and now < deadline
        )

    @property
    def _replayable(self) -> bool:
        return self.replay is not None or not self.head.has_body

    # -- one attempt -----------------------------------------------------------

    async def _attempt(self, service: Service, target: Target, *, fresh: bool) -> None:
        assert target.connections is not None and target.metrics is not None
        self.target = self.attempting = target
        target.in_flight += 1
        target.metrics.request()
        started = self.loop.time()
        self._head_waiter = self._done_waiter = None
        try:
            conn = None if fresh else self._reuse_idle(target)
            if conn is None:
                conn = await self._connect(target, fresh)
            if self.aborted and self.error is not None:
                raise self.error
            if self.drain_cancelled:
                # Cut at a drain deadline while it waited for a connection slot
                # (or was connecting): the draining target must not get it now.
                error = UpstreamTimeout("target drained before the request was sent")
                raise AttemptFailed(
                    error, Attempt(sent=False, responded=False, reused=False), False
                )
            self._send_request(conn)
            await self._await_response(conn)
        finally:
            self.attempting = None
            target.in_flight -= 1
            self._release(target)
            if target.in_flight == 0 and target.state != "ready":
                self.client.server.target_idle(target)
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
            raise AttemptFailed(
                exc, Attempt(sent=False, responded=False, reused=False), True
            ) from None
        except ProxyError as exc:  # queue timeout: the target is busy, not broken
            raise AttemptFailed(
                exc, Attempt(sent=False, responded=False, reused=False), False
            ) from None
        self._use(conn)
        return conn

    def _use(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.begin(
            self, head_request=self.head.method == b"HEAD", upgrade=self.head.upgrade is not None
        )

    def _send_request(self, conn: UpstreamConnection) -> None:
        if self.head.expect_continue and not self.continue_sent and not self.body_done:
            self.continue_sent = True
            self.client.write(http.CONTINUE_100)
        parts = http.upstream_head(self.head, self.path, self.client.forwarded, self.request_id)
        for piece in self.replay or ():
            parts += self._frame(piece)
        # A small body usually arrived in the same read as the head: one write
        # (one syscall, one segment) carries both.
        parts += self._take_pending()
        conn.writelines(parts)
        self.sent = True
        self.client.resume_reading("body")

    async def _await_response(self, conn: UpstreamConnection) -> None:
        self._head_waiter = self.loop.create_future()
        self._done_waiter = self.loop.create_future()
        # The watchdog bounds the wait for the head as well as the gaps in
        # the body: one lazily re-armed timer instead of a timeout per phase.
        self._start_watchdog()
        try:
            await self._head_waiter
        except UpstreamTimeout:
            if self.drain_cancelled:
                raise  # cut by cancel_for_drain, not the watchdog: ends the exchange
            conn.abort()
            raise self._attempt_failed(
                UpstreamTimeout("upstream read timed out"), conn, True
            ) from None
        except (ConnectionError, OSError, UpstreamProtocolError) as exc:
            raise self._attempt_failed(_as_proxy_error(exc), conn, True) from None
        if self.upgraded:
            self._stop_watchdog()
        try:
            await self._done_waiter
        except (ConnectionError, OSError, ProxyError) as exc:
            # The response was under way: the client cannot get a clean answer now.
            raise self._attempt_failed(_as_proxy_error(exc), conn, True) from None

    def _attempt_failed(
        self, error: ProxyError, conn: UpstreamConnection, target_fault: bool
    ) -> AttemptFailed:
        attempt = Attempt(
            sent=self.sent,
            responded=self.responded,
            reused=conn.reused,
            closed=isinstance(error, UpstreamReset),
        )
        if is_keepalive_race(attempt):
            target_fault = False
        return AttemptFailed(error, attempt, target_fault and not self.drain_cancelled)

    def _release(self, target: Target) -> None:
        conn, self.conn = self.conn, None
        if conn is None or target.connections is None:
            return
        waiter = self._done_waiter
        clean = (
            waiter is not None
            and waiter.done()
            and not waiter.cancelled()
            and not waiter.exception()
        )
        # A connection that was asked to upgrade is never reused, even when the
        # target declined: it may have switched anyway, or read on as if it had.
        reusable = (
            clean and self.body_done and self._upstream_keep_alive and self.head.upgrade is None
        )
        if not clean:
            # Detach first: this attempt is over, so the close must not report
            # to us (a waiter nobody awaits would log "exception never retrieved").
            conn.sink = None
            conn.abort()
        target.connections.release(conn, reusable=reusable)

    # -- request body (called by the client connection) ------------------------

    def feed_body(self, data: bytes) -> None:
        self.body_received += len(data)
        limit = self.client.settings.max_body_size
        if limit and self.body_received > limit:
            raise BadRequest("request body too large", status=413)
        self.pending.append(data)
        self.pending_size += len(data)
        if self.conn is not None and self.sent:
            self._flush_pending()
        elif self.pending_size > BODY_HIGH_WATER:
            self.client.pause_reading("body")

    def end_body(self) -> None:
        self.body_done = True
        if self.conn is not None and self.sent:
            self._flush_pending()

    def _flush_pending(self) -> None:
        conn = self.conn
        assert conn is not None
        parts = self._take_pending()
        if parts:
            conn.writelines(parts)
        self.client.resume_reading("body")

    def _take_pending(self) -> list[bytes]:
        """The unsent body, framed for the upstream, and kept for a replay."""
        parts: list[bytes] = []
        while self.pending:
            piece = self.pending.popleft()
            parts += self._frame(piece)
            self._keep_for_replay(piece)
        self.pending_size = 0
        if self.body_done and self.head.chunked:
            parts.append(http.LAST_CHUNK)
        return parts

    def _frame(self, piece: bytes) -> list[bytes]:
        return http.chunk(piece) if self.head.chunked else [piece]

    def _keep_for_replay(self, piece: bytes) -> None:
        if self.replay is None:
            return
        self.replay_size += len(piece)
        if self.replay_size > REPLAY_LIMIT:
            self.replay = None  # too big to hold: this request is no longer retryable once sent
        else:
            self.replay.append(piece)

    def body_error(self, exc: BadRequest) -> None:
        """The client's body broke the protocol mid-stream: never forward the rest."""
        self.keep_alive = False
        self.aborted = True
        self.error = exc
        self.pending.clear()
        self._settle(self._head_waiter, exc)
        if self.conn is not None:
            self.conn.abort()

    # -- ResponseSink (called by the upstream connection) ----------------------

    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        waiter = self._head_waiter
        self.status = status
        self._upstream_keep_alive = keep_alive
        self._last_read = self.loop.time()
        self._out += self._response_head(status, reason, headers)
        self.responded = True
        self._settle(waiter, None)

    def _response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> list[bytes]:
        names = [name.lower() for name, _ in headers]  # lowered once for both passes
        framing = self._framing(status, headers, names)
        # What the head announces is what exchange_done will do.
        self.keep_alive = self.keep_alive and self.client.keep_alive_allowed(self)
        extra = [b"Set-Cookie: ", self.set_cookie, b"\r\n"] if self.set_cookie else None
        return http.response_head(
            status,
            reason,
            headers,
            version=self.head.version,
            framing=framing,
            keep_alive=self.keep_alive,
            request_id=self.request_id,
            extra=extra,
            names=names,
        )

    def _framing(
        self, status: int, headers: list[tuple[bytes, bytes]], names: list[bytes]
    ) -> bytes:
        """Decide how the body is framed towards the client (RFC 9112 §6.3)."""
        if self.head.method == b"HEAD" or status in (204, 304) or status == 101:
            return b""
        if b"content-length" in names:
            return b""
        codings = _transfer_codings(headers, names)
        # RFC 9112 §6.3 item 7: unless chunked is the last coding, the body
        # runs to the close, whatever else Transfer-Encoding says.
        self._close_delimited = not codings or codings[-1] != b"chunked"
        if self.head.version == b"1.1":
            self._rechunk = True
            # We undo only the chunking; any other coding is the client's to undo.
            kept = [coding for coding in codings if coding != b"chunked"]
            return b"Transfer-Encoding: " + b", ".join([*kept, b"chunked"]) + b"\r\n"
        self.keep_alive = False  # HTTP/1.0 client: the end of the body is the close
        return b""

    def on_response_body(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        if self._rechunk:
            self._out += http.chunk(data)
        else:
            self._out.append(data)

    def on_response_complete(self) -> None:
        if self._rechunk:
            self._out.append(http.LAST_CHUNK)
        self.flush_response()
        self._settle(self._done_waiter, None)

    def flush_response(self) -> None:
        """Write what this upstream read produced (called once per read)."""
        if self._out:
            out, self._out = self._out, []
            self.client.write_lines(out)

    def on_upgraded(self, rest: bytes) -> None:
        self.upgraded = True
        self.keep_alive = False
        self.flush_response()
        self.client.become_tunnel(self)
        if rest:
            self.client.write(rest)

    def on_upstream_lost(self, exc: Exception) -> None:
        if self.upgraded:
            self.client.close()
            self._settle(self._done_waiter, None)
            return
        if self._close_delimited and self.responded:
            # RFC 9112 §6.3 item 8: a body with no length ends with the close.
            self._upstream_keep_alive = False
            self.on_response_complete()
            return
        error = exc if isinstance(exc, Exception) else ConnectionResetError()
        if self._head_waiter is not None and not self._head_waiter.done():
            self._settle(self._head_waiter, error)
        else:
            self._settle(self._done_waiter, error)

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
        self.drain_cancelled = True
        if self.target is not None and self.target.metrics is not None:
            self.target.metrics.fail("cancelled")
        if self.upgraded:
            self.client.close()
        error = UpstreamTimeout("target drained before the response finished")
        if self._head_waiter is not None and not self._head_waiter.done():
            self._settle(self._head_waiter, error)
        elif self._done_waiter is not None:
            self._settle(self._done_waiter, error)
        if self.conn is not None:
            self.conn.abort()

    # -- internals -------------------------------------------------------------

    def _settle(self, waiter: asyncio.Future[None] | None, error: Exception | None) -> None:
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

    def _start_watchdog(self) -> None:
        # The client connection answers one exchange at a time, so they take
        # turns on its one watchdog: no timer armed and cancelled per attempt.
        # A retry starts over, moving the same deadline.
        self._watching = True
        self._last_read = self.loop.time()
        self._watch_until(self._last_read + self.client.settings.read_timeout)

    def _watch_until(self, when: float) -> None:
        self.client.watchdog.set(when, self._check_idle)

    def _check_idle(self) -> None:
        # The deadline is moved lazily: on_response_body only stores the time.
        timeout = self.client.settings.read_timeout
        idle_for = self.loop.time() - self._last_read
        waiting_head = self._head_waiter is not None and not self._head_waiter.done()
        # A client that stops reading pauses the upstream read: not the target's delay.
        if idle_for < timeout or (self.client.write_paused and not waiting_head):
            self._watch_until(self.loop.time() + max(timeout - idle_for, 0.05))
            return
        self._watching = False
        error = UpstreamTimeout("upstream read timed out")
        if waiting_head:
            self._settle(self._head_waiter, error)
            return  # _await_response aborts the connection
        self._settle(self._done_waiter, error)
        if self.conn is not None:
            self.conn.abort()

    def _stop_watchdog(self) -> None:
        if self._watching:
            self._watching = False
            self.client.watchdog.clear()


class Maintenance(ProxyError):
    """The service is being recreated and shows a maintenance page."""

    status = 503
    kind = "maintenance"

    def __init__(self, html: str, retry_after: int) -> None:
        super().__init__("maintenance")
        self.html = html.encode()
        self.retry_after = retry_after

    def response(self, request_id: bytes, *, head_only: bool = False) -> bytes:
        extra = b"Retry-After: %d\r\nContent-Type: text/html; charset=utf-8\r\n" % self.retry_after
        return http.error_response(
            503,
            request_id=request_id,
            close=False,
            extra=extra,
            body=self.html,
            head_only=head_only,
            kind=self.kind.encode(),
        )


def _transfer_codings(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> list[bytes]:
    """The transfer codings of a response, in the order they were applied."""
    return [
        coding.strip().lower()
        for (_, value), name in zip(headers, names, strict=True)
        if name == b"transfer-encoding"
        for coding in value.split(b",")
        if coding.strip()
    ]


def _as_proxy_error(exc: BaseException) -> ProxyError:
    if isinstance(exc, ProxyError):
        return exc
    return UpstreamReset(f"upstream connection lost: {exc}")


def _failure_kind(exc: ProxyError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamProtocolError):
        return "protocol"
    if isinstance(exc, UpstreamReset):
        return "reset"
    if isinstance(exc, UpstreamConnectError):
        return "connect"
    return "other"
