"""The embedded data plane's process-level object: listening sockets, the
routing table in force, draining, stats and graceful stop.

A table swap is one attribute assignment on the event loop's thread, so a
request sees either the old router or the new one, never a mix; requests
already in flight keep the Target they picked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import socket
import ssl
import sys
import time
from typing import IO

from zerodown.dataplane.prometheus import render_prometheus
from zerodown.errors import ConfigError, DataPlaneError
from zerodown.proxy import tls
from zerodown.proxy.accept_proxy import ExpectProxy
from zerodown.proxy.caching import cache_counts
from zerodown.proxy.client import ClientConnection, is_trusted
from zerodown.proxy.exchange import Exchange
from zerodown.proxy.guard import Refusal
from zerodown.proxy.health import HealthShare
from zerodown.proxy.listener import Listener, bind_listener
from zerodown.proxy.metrics import target_entry
from zerodown.proxy.ratelimit import BucketTable
from zerodown.proxy.router import Router
from zerodown.proxy.service import HealthHook, Service
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.target import Target
from zerodown.proxy.tcp import TcpFront
from zerodown.routing import DrainResult, RoutingTable, parse_address, with_target_state
from zerodown.stats import ServiceStats, Stats, pool_entry, service_panic

HOLD_POLL = 0.1  # seconds between looks for a target while a request is held

log = logging.getLogger("zerodown.proxy")


class ProxyServer:
    def __init__(
        self,
        settings: ProxySettings,
        table: RoutingTable | None = None,
        *,
        checks: bool = True,
        on_health: HealthHook | None = None,
        rate_table: str | None = None,
    ) -> None:
        self.settings = settings
        # The file of the rate-limit buckets all workers of a node share
        # (proxy/ratelimit.py); None: this process keeps its own.
        self._rate_table = rate_table
        # A worker of several runs no checks of its own and reports the
        # verdicts it reaches (passive ejections) through on_health.
        self._checks = checks
        self._on_health = on_health
        self.loop = asyncio.get_running_loop()
        self.table = RoutingTable()
        self.services: dict[str, Service] = {}
        self.router: Router[Service] = Router([])
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self.rejected: dict[int, int] = {}
        self._listeners: list[Listener] = []
        self._sockets: list[socket.socket] = []
        self.tls_context: ssl.SSLContext | None = None
        self.https_port: int | None = None  # where redirect_http sends plain-HTTP clients
        self._trusted_nets = [
            ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies
        ]
        self._trusted_cache: dict[str, bool] = {}
        self._drain_waiters: dict[Target, asyncio.Future[None]] = {}
        self._table_changed: asyncio.Future[None] = self.loop.create_future()
        self._closed_event = asyncio.Event()
        self._access_log: IO[str] | None = None
        self._buckets: BucketTable | None = None  # made when a service first limits rates
        # tcp services: their open connections, and which listening port is whose
        self.tcp = TcpFront(self)
        self._tcp_ports: dict[int, str] = {}
        self.apply_now(table or RoutingTable())

    def __repr__(self) -> str:
        return f"<ProxyServer {self.addresses} services={list(self.services)}>"

    # -- listening -------------------------------------------------------------

    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        """Listen on `listen`: `[proxy] listen`, then `[proxy.tls] listen` (proxy/tls.py)."""
        self._open_access_log()
        sockets = [bind_listener(item) if isinstance(item, str) else item for item in listen]
        secure = tls.tls_fds(sockets, self.settings.tls)
        if secure and self.settings.tls is not None:
            self.tls_context = tls.load(self.settings.tls)
        for sock in sockets:
            self._sockets.append(sock)
            self._listen(sock, sock.fileno() in secure)

    def _listen(self, sock: socket.socket, secure: bool) -> None:
        context = self.tls_context if secure else None
        if secure and self.https_port is None:
            self.https_port = sock.getsockname()[1]
        scheme = b"https" if secure else b"http"
        factory = functools.partial(self._protocol, sock.getsockname()[1], scheme)
        timeout = self.settings.header_timeout
        expect = self._expect_proxy(scheme) if self.settings.proxy_protocol else None
        listener = Listener(
            sock, factory, self.loop, context, handshake_timeout=timeout, expect_proxy=expect
        )
        listener.start()
        self._listeners.append(listener)

    def _expect_proxy(self, scheme: bytes) -> ExpectProxy:
        """`proxy_protocol`: trusted peers name the client in a PROXY header first."""

        def protocol_for(client_ip: str) -> ClientConnection:
            connection = ClientConnection(self, scheme=scheme)
            connection.client_ip = client_ip  # and trust, X-Forwarded-For: as if it came itself
            return connection

        return ExpectProxy(self.is_trusted, protocol_for, self.settings.header_timeout)

    @property
    def redirect_port(self) -> int | None:
        """The port plain-HTTP clients are sent to with a 308 (`[proxy.tls]
        redirect_http`), None when they are served."""
        on = self.settings.tls is not None and self.settings.tls.redirect_http
        return self.https_port if on else None

    def reload_tls(self) -> bool:
        """Read the certificates again (SIGHUP, a hot restart): new connections get
        them, open ones keep theirs. A bad file leaves the old ones in force."""
        if self.tls_context is None or self.settings.tls is None:
            return False
        try:
            context = tls.load(self.settings.tls)
        except ConfigError as exc:
            log.error("TLS certificates not reloaded, the old ones serve on: %s", exc)
            raise
        self.tls_context = context
        for listener in self._listeners:
            if listener.tls is not None:
                listener.tls = context
        log.info("TLS certificates reloaded")
        return True

    def _protocol(self, port: int, scheme: bytes) -> asyncio.Protocol:
        # Looked up per connection, so the table in force decides: a listener
        # is a tcp service's when the table says that service listens there.
        tcp = self._tcp_ports.get(port)
        return self.tcp.protocol(tcp) if tcp is not None else ClientConnection(self, scheme=scheme)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self._sockets]

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    def is_trusted(self, ip: str) -> bool:
        trusted = self._trusted_cache.get(ip)
        if trusted is None:
            trusted = is_trusted(ip, self._trusted_nets)
            if len(self._trusted_cache) < 65536:
                self._trusted_cache[ip] = trusted
        return trusted

    # -- the routing table -----------------------------------------------------

    async def apply(self, table: RoutingTable) -> None:
        self.apply_now(table)

    def apply_now(self, table: RoutingTable) -> None:
        """Swap the table in this loop iteration; DataPlaneError leaves the old one."""
        old = self.services
        try:
            buckets = self._bucket_table(table)
            new = {
                spec.name: Service(
                    spec,
                    self.settings,
                    old.get(spec.name),
                    checks=self._checks,
                    on_health=self._on_health,
                    buckets=buckets,
                )
                for spec in table.services
            }
        except Exception as exc:  # an illegal target move: the old table stays in force
            raise DataPlaneError(f"routing table refused: {exc}") from exc
        self.router = Router([s for s in new.values() if s.spec.mode == "http"])
        self._tcp_ports = {
            parse_address(s.listen)[1]: s.name for s in table.services if s.listen is not None
        }
        self.services = new
        self.table = table
        for name, service in old.items():
            for checker in service.retire(new.get(name)):
                self.loop.create_task(checker.stop())
        for name, service in new.items():
            service.start(old.get(name))
        for target in list(self._drain_waiters):
            self.target_idle(target)
        changed, self._table_changed = self._table_changed, self.loop.create_future()
        changed.set_result(None)

    def _bucket_table(self, table: RoutingTable) -> BucketTable | None:
        """The rate-limit buckets, opened the first time a service asks for them."""
        if self._buckets is None and any(
            spec.guard is not None and spec.guard.rate_limit is not None for spec in table.services
        ):
            self._buckets = BucketTable(self._rate_table)
        return self._buckets

    async def wait_for_target(self, name: str, deadline: float) -> Service | None:
        """Hold a request until service `name` has a target that can serve, or the deadline.

        Woken by every table change; health may bring a target back between
        changes, so it also looks again every HOLD_POLL seconds.
        """
        while True:
            service = self.services.get(name)
            if service is not None and (service.stable.available or service.canary.available):
                return service
            remaining = deadline - self.loop.time()
            if remaining <= 0 or self.stopping:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._table_changed), min(remaining, HOLD_POLL)
                )

    def routing(self) -> RoutingTable:
        return self.table

    def locate(self, service: str, address: str) -> tuple[Service, Target] | None:
        """Service `service` and its target at `address`, if the table has them."""
        found = self.services.get(service)
        target = found.targets_by_address().get(address) if found else None
        return (found, target) if found is not None and target is not None else None

    def heard_answers(self, service: str, address: str, now: float, lag: float) -> None:
        """Real responses of a target came to light `lag` seconds late at most (a
        supervisor reading its workers' counters): it is answering (health.py)."""
        located = self.locate(service, address)
        if located is not None:
            located[1].health.answered(now, lag)

    def adopt_health(self, service: str, address: str, share: HealthShare) -> bool:
        """Copy a health verdict reached in another process; False if the target is gone."""
        located = self.locate(service, address)
        if located is not None:
            located[0].adopt_health(located[1], share)
        return located is not None

    # -- draining --------------------------------------------------------------

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        started = time.monotonic()
        target = self._find(service, address)
        # Sticky clients may follow it for the first half of the drain only:
        # the second is for their requests to finish (proxy/sticky.py).
        target.sticky_until = time.monotonic() + timeout / 2
        self.apply_now(with_target_state(self.table, service, address, "draining"))
        assert target.connections is not None
        target.connections.close_idle()
        cancelled = 0
        if self.services[service].spec.websocket_drain == "close":
            cancelled = self._cancel_busy(target, tunnels_only=True)
        completed = await self._wait_idle(target, timeout)
        target.sticky_until = 0.0  # drained: its clients move on
        if not completed:
            cancelled += self._cancel_busy(target, tunnels_only=False)
            cancelled += self.tcp.cut(target)  # open tcp connections end at the deadline
        return DrainResult(service, address, completed, cancelled, time.monotonic() - started)

    def _find(self, service: str, address: str) -> Target:
        located = self.locate(service, address)
        if located is None:
            raise DataPlaneError(f"no target {address} in service {service}")
        return located[1]

    async def _wait_idle(self, target: Target, timeout: float) -> bool:
        if target.in_flight == 0:
            return True
        waiter = self._drain_waiters.setdefault(target, self.loop.create_future())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except TimeoutError:
            return target.in_flight == 0
        finally:
            self._drain_waiters.pop(target, None)

    def target_idle(self, target: Target) -> None:
        """Called when a request on `target` ends; wakes a drain waiting for it."""
        if target.in_flight == 0 and self._drain_waiters:
            waiter = self._drain_waiters.get(target)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _cancel_busy(self, target: Target, *, tunnels_only: bool) -> int:
        # Every exchange with an attempt on `target`, not only those holding
        # one of its connections: one still waiting for a slot (or connecting)
        # is in flight there too. Only the head of a client's queue runs.
        cancelled = 0
        for client in list(self.connections):
            exchange = client.queue[0] if client.queue else None
            if exchange is None or exchange.attempting is not target:
                continue
            if exchange.tunnelled or not tunnels_only:
                exchange.cancel_for_drain()
                cancelled += 1
        return cancelled

    # -- stats -----------------------------------------------------------------

    def stats(self) -> Stats:
        services: dict[str, ServiceStats] = {}
        for name, service in self.services.items():
            pools = {}
            for pool in (service.stable, service.canary):
                entries = {t.address: target_entry(t) for t in pool.targets}
                pools[pool.name] = pool_entry(entries)
            services[name] = ServiceStats(
                pools=pools,
                canary_weight=service.spec.split.canary_weight,
                panic=service_panic(pools),
                **service.refused.as_dict(),
                **cache_counts(service.cache),
            )
        return Stats(
            services=services,
            connections=len(self.connections) + len(self.tcp.pipes),  # tcp ones too
            rejected={str(status): n for status, n in sorted(self.rejected.items())},
        )

    def prometheus(self) -> str:
        return render_prometheus(self.stats())

    def log_access(self, client: ClientConnection, exchange: Exchange) -> None:
        if exchange.target is None and exchange.status >= 400:
            self.rejected[exchange.status] = self.rejected.get(exchange.status, 0) + 1
        if self._access_log is None:
            return
        entry = {
            "time": time.time(),
            "client": exchange.client_ip,
            "method": exchange.head.method.decode("latin-1"),
            "path": exchange.path.decode("latin-1"),
            "status": exchange.status,
            "target": exchange.target.address if exchange.target else None,
            "duration": round(self.loop.time() - exchange.started, 6),
            "request_id": exchange.request_id.decode("latin-1"),
            "error": exchange.failure.kind if exchange.failure is not None else None,
        }
        if isinstance(exchange.failure, Refusal):
            entry["rule"] = exchange.failure.rule  # which allow/deny, block or rate_limit rule
        self._access_log.write(json.dumps(entry) + "\n")

    def _open_access_log(self) -> None:
        path = self.settings.access_log
        if path == "-":
            self._access_log = sys.stdout
        elif path:
            self._access_log = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the server

    # -- stopping --------------------------------------------------------------

    def connection_closed(self) -> None:
        if self.stopping and not self.connections:
            self._closed_event.set()

    async def stop(self, timeout: float | None = None, *, idle_grace: float = 0.0) -> None:
        """Stop accepting, let in-flight requests finish up to `timeout`, then cut the rest.

        `idle_grace`: how long an idle keep-alive connection may still send one
        request (see ClientConnection.shutdown); a data plane handing over to
        a successor gives its clients that, so none of them sees a reset.
        """
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self.stopping = True
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            conn.shutdown(min(idle_grace, timeout))
        deadline = self.loop.time() + timeout
        if self.connections:
            try:
                await asyncio.wait_for(self._closed_event.wait(), timeout)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
        await self.tcp.close(max(0.0, deadline - self.loop.time()))
        await self._close_services()
        if self._access_log is not None and self._access_log is not sys.stdout:
            self._access_log.close()
        if self._buckets is not None:
            self._buckets.close()

    async def _close_services(self) -> None:
        for service in self.services.values():
            for checker in service.retire(None):
                await checker.stop()
        self.services = {}
