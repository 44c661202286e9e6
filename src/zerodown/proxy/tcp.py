"""L4: a `mode = "tcp"` service's connections, piped byte for byte to a target.

A client connection on a tcp service's listener picks a pool (the canary
weight is a share of connections), then a target with the service's
balancer, connects to it and pipes both ways until both sides are done:

- half-close is passed on: a client's FIN becomes a FIN to the target
  (write_eof) and the other way round, so request/response protocols that
  end a request with EOF still get their answer; the pipe closes when both
  directions have ended, or when either side resets or closes.
- backpressure: when one side's send buffer is over its high-water mark the
  other side stops reading (pause_writing -> pause_reading), so a fast
  sender never fills the proxy's memory behind a slow reader.
- a connect error (refused, timeout) tries another target, as HAProxy's
  `retry-on conn-failure`: nothing was sent yet. Once connected, never.

An open connection counts in its target's `in_flight`: least_conn balances
by it, and a drain waits for it to reach 0, then cuts what is left at the
drain timeout (ProxyServer.drain -> TcpFront.cut).

What the canary judge reads (docs/tcp.md): every connect is a request; a
failed one is a `connect` or `timeout` failure (a `retry` when another
target is tried next). A connected one has its outcome once the target
says its first byte, or the pipe ends: an answer (counted as a 2xx, with
the connect time as its latency), or a `reset` failure when the target
reset or closed its end having sent nothing after the client had spoken
(a release that accepts connections and drops them). A
connection cut at a drain's deadline before any answer is `cancelled`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Final, cast

from zerodown.guardspec import GuardSpec
from zerodown.proxy.access import AccessList
from zerodown.proxy.metrics import TargetMetrics
from zerodown.proxy.service import Choice, Service
from zerodown.proxy.target import Target

if TYPE_CHECKING:
    from zerodown.proxy.server import ProxyServer

log = logging.getLogger("zerodown.proxy.tcp")

# Targets one connection may try to connect to (each a different one).
CONNECT_TRIES: Final = 3


class TcpFront:
    """The open tcp pipes of one ProxyServer, by target, for drains and stop."""

    def __init__(self, server: ProxyServer, rng: random.Random | None = None) -> None:
        self.server = server
        self.pipes: set[Pipe] = set()
        self.rng = rng or random.Random()
        self._all_closed = asyncio.Event()
        # allow/deny by service, compiled once per guard (a table swap may change it)
        self._access: dict[str, tuple[GuardSpec, AccessList]] = {}

    def __repr__(self) -> str:
        return f"<TcpFront pipes={len(self.pipes)}>"

    def protocol(self, service: str) -> asyncio.Protocol:
        return Pipe(self, service).client

    def cut(self, target: Target) -> int:
        """Reset every connection to `target` (a drain's deadline); how many."""
        cut = [pipe for pipe in self.pipes if pipe.target is target]
        for pipe in cut:
            pipe.cut()
        return len(cut)

    async def close(self, timeout: float) -> None:
        """Wait up to `timeout` for the open connections to end, then cut them."""
        if self.pipes:
            self._all_closed.clear()
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout)
            except TimeoutError:
                for pipe in list(self.pipes):
                    pipe.cut()

    def opened(self, pipe: Pipe) -> None:
        self.pipes.add(pipe)

    def closed(self, pipe: Pipe) -> None:
        self.pipes.discard(pipe)
        if not self.pipes:
            self._all_closed.set()

    def refusal(self, service: Service, client_ip: str) -> str | None:
        """The allow/deny rule that refuses `client_ip` (the peer: L4 has no
        X-Forwarded-For), counted as `denied`; None to let it through."""
        guard = service.spec.guard
        if guard is None or not (guard.allow or guard.deny):
            return None
        compiled = self._access.get(service.name)
        if compiled is None or compiled[0] is not guard:
            compiled = self._access[service.name] = (guard, AccessList(guard.allow, guard.deny))
        rule = compiled[1].refusal(client_ip)
        if rule is not None:
            service.refused.denied += 1
        return rule

    def choose(self, service: Service, client_ip: str) -> Choice:
        """The pool by the canary weight (a share of connections), the key by the balancer."""
        canary, stable = service.canary, service.stable
        pool = stable
        if canary.targets and self.rng.random() * 100 < service.spec.split.canary_weight:
            pool = canary
        if not pool.available:
            pool = stable if pool is canary else canary
        return Choice(pool, client_ip if service.spec.balance == "ip_hash" else "")


class _Side(asyncio.Protocol):
    """One end of a pipe: what it reads goes out of the other end."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.ended = False  # this side sent its EOF (we passed it on)
        self.early: list[bytes] = []  # read before there was a peer to send it to

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
            return
        # Before the target is connected (uvloop starts reading an accepted
        # socket after connection_made, whatever it said): keep the first
        # bytes, and read no more until they can go on.
        self.early.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if not self.ended:
            self.ended = True
            self.pipe.half_closed(self)
        return True  # keep the other direction open

    def pause_writing(self) -> None:
        # Our send buffer is full: stop reading what would be sent into it.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.lost(self)


class _Client(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pipe.start()

    def data_received(self, data: bytes) -> None:
        self.pipe.client_spoke = True
        super().data_received(data)


class _Upstream(_Side):
    def data_received(self, data: bytes) -> None:
        if self.pipe.pending is not None:  # its first byte: the connection's outcome
            self.pipe.answered()
        super().data_received(data)

    def eof_received(self) -> bool:
        self.pipe.target_ended()
        return super().eof_received()


class Pipe:
    """One client connection and, once connected, its target connection."""

    def __init__(self, front: TcpFront, service: str) -> None:
        self.front = front
        self.service = service
        self.client = _Client(self)
        self.upstream = _Upstream(self)
        # What the target says goes to the client from its first byte on; the
        # client's wait in `early` until the target is connected.
        self.upstream.peer = self.client
        self.target: Target | None = None
        self.connected = False
        self._upstream_lost = False
        self._connecting: asyncio.Task[None] | None = None
        self._done = False
        self.client_spoke = False  # the client has sent a byte
        # Connected, outcome not known yet: (the target's metrics, connect seconds).
        self.pending: tuple[TargetMetrics, float] | None = None

    def __repr__(self) -> str:
        where = self.target.address if self.target else "-"
        return f"<Pipe {self.service} -> {where} done={self._done}>"

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.front.opened(self)
        self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        server = self.front.server
        service = server.services.get(self.service)
        if service is None or self.client.transport is None:
            self.abort()
            return
        peer = self.client.transport.get_extra_info("peername")
        client_ip = str(peer[0]) if peer else ""
        rule = self.front.refusal(service, client_ip)
        if rule is not None:
            log.info("tcp %s: %s refused by %s", self.service, client_ip, rule)
            self.close()  # before any byte reaches a target
            return
        choice = self.front.choose(service, client_ip)
        tried: list[Target] = []
        target = service.pick(choice, tried)
        while target is not None:
            tried.append(target)
            failure = await self._try(service, target)
            if failure is None:
                return
            # Counted once, as an HTTP try is: a retry when another target
            # is tried next, a failure when it was the last.
            failed = target
            target = service.pick(choice, tried) if len(tried) < CONNECT_TRIES else None
            if failed.metrics is not None and target is not None:
                failed.metrics.retry()
            elif failed.metrics is not None:
                failed.metrics.fail(failure)
        log.warning("tcp %s: %s", self.service, service.unavailable_reason())
        self.abort()

    async def _try(self, service: Service, target: Target) -> str | None:
        """Connect to `target`: None once the bytes flow (the target counts us),
        else the failure kind (`connect`, `timeout`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        target.in_flight += 1  # counted while connecting too: a drain waits for it
        self.target = target
        if target.metrics is not None:
            target.metrics.request()
        try:
            async with asyncio.timeout(self.front.server.settings.connect_timeout):
                await loop.create_connection(lambda: self.upstream, target.host, target.port)
        except (OSError, TimeoutError) as exc:
            self._release()
            service.observe(target, ok=False)
            log.debug("tcp %s: connect to %s failed: %s", self.service, target.address, exc)
            return "timeout" if isinstance(exc, TimeoutError) else "connect"
        service.observe(target, ok=True)
        if target.metrics is not None:
            # The connect time is the latency the judge compares; the outcome
            # waits for the target's first byte or the pipe's end.
            self.pending = (target.metrics, loop.time() - started)
        self.connected = True
        if self._done or self._upstream_lost:  # the client left, or the target, meanwhile
            if self._upstream_lost:
                self.target_ended()
            self.close()
            self.answered()  # the client left meanwhile: the target failed nothing
            return None
        self.client.peer = self.upstream
        self._flush_early()
        return None

    def answered(self) -> None:
        """The connection's outcome is an answer: a 2xx, its connect time as latency."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending[0].response(200, pending[1])

    def failed(self, kind: str) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending[0].fail(kind)

    def target_ended(self) -> None:
        """The target closed or reset its end: before any byte of its own, after
        the client had spoken, that is a dropped connection (`reset`). What
        nginx can tell too (docs/tcp.md); a client that said nothing and a
        target that closed is a served connection."""
        if self.pending is not None and self.client_spoke:
            self.failed("reset")

    def _flush_early(self) -> None:
        """Send what the client said while we connected, and its EOF if it came."""
        upstream, client = self.upstream.transport, self.client.transport
        assert upstream is not None
        assert client is not None
        for data in self.client.early:
            upstream.write(data)
        self.client.early.clear()
        if self.client.ended:
            self.half_closed(self.client)
        else:
            client.resume_reading()

    def half_closed(self, side: _Side) -> None:
        peer = side.peer
        if peer is None or peer.transport is None:
            return
        if peer.ended:
            self.close()  # both directions are done
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()

    def lost(self, side: _Side) -> None:
        if side is self.upstream and not self.connected:
            self._upstream_lost = True  # _try sees it once create_connection returns
            return
        if side is self.upstream:
            self.target_ended()
        self.close()

    def close(self) -> None:
        """Close both ends (what is buffered is still sent), once."""
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()
        self._finish()

    def cut(self) -> None:
        """Reset both ends at a drain's or a stop's deadline: a connection not
        answered yet was cut by us, not failed by its target (`cancelled`)."""
        self.failed("cancelled")
        self.abort()

    def abort(self) -> None:
        """Reset both ends: a drain's deadline, a stop's, or no target to go to."""
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self.answered()  # ended with no byte from the target and no failure: served
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self._release()
        self.front.closed(self)

    def _release(self) -> None:
        target, self.target = self.target, None
        if target is None:
            return
        target.in_flight -= 1
        if target.in_flight == 0 and target.state != "ready":
            self.front.server.target_idle(target)
