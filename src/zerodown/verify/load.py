"""The load generator: keep-alive connections that send requests and record
what became of every one of them.

`run_load(spec, stop)` opens `concurrency` connections, each sending one
request at a time (closed loop), or at an overall `rate` shared by all of
them (open loop, on a fixed time grid). Every request ends as exactly one
`Sample`: answered (with its status and `X-Version`), or failed with a kind:

    connect   the connection could not be opened (nothing was sent)
    reset     the connection closed or was reset before the response was complete
    5xx       the response had a 5xx status
    timeout   no complete response within `timeout`
    protocol  the response was not valid HTTP/1.x

A keep-alive connection the server closed *between* requests is not a failure
of anything: the request goes on a new connection and `reconnects` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from zerodown.errors import ConfigError
from zerodown.verify.connection import (
    BadResponse,
    ConnectFailed,
    Connection,
    ConnectionClosed,
    Response,
    tls_context,
)

FailureKind = Literal["connect", "reset", "5xx", "timeout", "protocol"]
FAILURE_KINDS: tuple[FailureKind, ...] = ("connect", "reset", "5xx", "timeout", "protocol")
RequestKind = Literal["get", "post", "long"]

CONCURRENCY = 16
REQUEST_TIMEOUT = 10.0  # connect + response of one request (a retry included)
POST_PATH = "/echo"
LONG_PATH = "/slow?ms=5000"
POST_BODY = b'{"zerodown": "verify", "padding": "0123456789abcdef"}'
USER_AGENT = "zerodown-verify"
# After a failed connect, a connection waits this long before its next request:
# without it a closed loop against a dead port spins as fast as the kernel can
# refuse, starving the event loop (and a proxy sharing it) and drowning the
# report in thousands of identical failures per second.
CONNECT_BACKOFF = 0.05
# How far the open-loop schedule may fall behind (every connection busy)
# before the backlog is forgotten instead of sent as one burst.
MAX_LAG = 0.1
STOP_GRACE = 1.0  # on top of `timeout`, for in-flight requests to be recorded

# Every time in a run comes from this clock. Not loop.time(): uvloop's has a
# resolution of one millisecond, coarser than a fast answer's latency.
clock = time.perf_counter


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str  # http:// or https://; its path (and query) is what GETs ask for
    concurrency: int = CONCURRENCY  # connections, each with one request in flight
    rate: float | None = None  # requests/s over all connections; None: as fast as they go
    duration: float | None = None  # seconds; None: until `stop` is set
    post_ratio: float = 0.0  # share of POSTs with a small body to `post_path`
    post_path: str = POST_PATH
    long_ratio: float = 0.0  # share of GETs to `long_path` (a slow endpoint)
    long_path: str = LONG_PATH
    timeout: float = REQUEST_TIMEOUT
    headers: Mapping[str, str] = field(default_factory=dict)  # added to every request
    # https: check the certificate's name and chain. `zerodown verify` turns it
    # off for the proxy's own TLS listener (cli/verify.py), not for a --url.
    check_cert: bool = True

    def __post_init__(self) -> None:
        _check(self.concurrency >= 1, "concurrency", "must be at least 1")
        _check(self.rate is None or self.rate > 0, "rate", "must be positive")
        _check(self.duration is None or self.duration > 0, "duration", "must be positive")
        _check(self.timeout > 0, "timeout", "must be positive")
        _check(0 <= self.post_ratio <= 1, "post_ratio", "must be within 0..1")
        _check(0 <= self.long_ratio <= 1, "long_ratio", "must be within 0..1")
        # A tolerance, so that shares like 0.7 + 0.3 pass despite float rounding.
        total = self.post_ratio + self.long_ratio
        _check(total <= 1 + 1e-9, "long_ratio", "plus post_ratio is over 1")
        Target.parse(self.url)


@dataclass(frozen=True, slots=True)
class Sample:
    """What became of one request. Times are seconds; `start` from the load's origin."""

    start: float
    latency: float  # from the first attempt to the response or the failure
    status: int  # 0 without a response
    version: str  # the X-Version header; "-" without one
    failure: FailureKind | None = None
    kind: RequestKind = "get"

    @property
    def answered(self) -> bool:
        return self.status > 0


@dataclass(frozen=True, slots=True)
class LoadResult:
    spec: LoadSpec
    samples: tuple[Sample, ...]  # in the order requests finished
    reconnects: int  # new connections for a keep-alive one the server closed between requests
    elapsed: float  # seconds from the origin until the load was told to stop
    started_at: float  # wall clock (time.time()) at the origin, to line samples up with logs
    origin: float  # clock() at the origin, to place other events on the samples' axis


async def run_load(spec: LoadSpec, stop: asyncio.Event | None = None) -> LoadResult:
    """Send load until `spec.duration` passes or `stop` is set, then let in-flight
    requests finish (each has its own `timeout`) and return every sample."""
    run = _Run(spec, Target.parse(spec.url))
    workers = [asyncio.create_task(_Worker(run).loop()) for _ in range(spec.concurrency)]
    try:
        await _until_stopped(stop, spec.duration, workers)
    except BaseException:  # cancelled: no report is coming, so do not wait for one
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    elapsed = run.stop()
    await _finish(workers, spec.timeout + STOP_GRACE)
    samples = tuple(run.samples)
    return LoadResult(spec, samples, run.reconnects, elapsed, run.started_at, run.origin)


# -- the pieces ------------------------------------------------------------------


def _check(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(reason, key=f"verify.{key}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes, from the URL."""

    host: str
    port: int
    tls: bool
    path: str  # path and query of the URL, for GETs
    authority: str  # the Host header

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) URL: {url!r}", key="verify.url")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ConfigError(f"bad port in {url!r}", key="verify.url") from exc
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, parts.scheme == "https", path, parts.netloc)


def host_header(headers: Mapping[str, str], target: Target) -> str:
    """The Host a request carries: one in `headers` replaces the URL's, since the
    proxy routes by it (a service on host "api.example.com" is reached at
    127.0.0.1 all the same)."""
    return next((v for k, v in headers.items() if k.lower() == "host"), target.authority)


def server_name(headers: Mapping[str, str], target: Target) -> str:
    """The TLS SNI name for that Host, as a browser sends it: the Host without
    its port (the proxy picks the certificate for it)."""
    return urlsplit(f"//{host_header(headers, target)}").hostname or target.host


class Mix:
    """Which kind of request comes next: nginx's smooth weighted round robin over
    the kinds' shares, so any stretch of requests holds each kind in proportion
    (a random draw would leave short runs lopsided) and a run is reproducible."""

    def __init__(self, post_ratio: float, long_ratio: float) -> None:
        shares: dict[RequestKind, float] = {
            "get": 1.0 - post_ratio - long_ratio,
            "post": post_ratio,
            "long": long_ratio,
        }
        self._shares = {kind: share for kind, share in shares.items() if share > 0}
        self._credit = dict.fromkeys(self._shares, 0.0)

    def next(self) -> RequestKind:
        for kind, share in self._shares.items():
            self._credit[kind] += share
        kind = max(self._credit, key=self._credit.__getitem__)
        self._credit[kind] -= 1.0  # the shares add up to 1
        return kind


class Pacer:
    """Send times `1/rate` apart on a fixed grid from the origin (open loop).

    A grid, not "now + interval", so that timers firing a little late do not
    add up to a lower rate; a grid more than MAX_LAG behind (every connection
    was busy) moves up to now instead of being paid back in a burst."""

    def __init__(self, rate: float, origin: float) -> None:
        self._interval = 1.0 / rate
        self._next = origin

    def delay(self, now: float) -> float:
        """Seconds from `now` until the next request is due (may be <= 0)."""
        due = max(self._next, now - MAX_LAG)
        self._next = due + self._interval
        return due - now


def build_requests(spec: LoadSpec, target: Target) -> dict[RequestKind, bytes]:
    """The bytes of each kind of request, built once: every request of a kind is the same."""
    lines = [f"Host: {host_header(spec.headers, target)}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in spec.headers.items() if name.lower() != "host"]
    head = "".join(f"{line}\r\n" for line in lines)
    post = f"Content-Type: application/json\r\nContent-Length: {len(POST_BODY)}\r\n"
    return {
        "get": f"GET {target.path} HTTP/1.1\r\n{head}\r\n".encode("latin-1"),
        "long": f"GET {spec.long_path} HTTP/1.1\r\n{head}\r\n".encode("latin-1"),
        "post": f"POST {spec.post_path} HTTP/1.1\r\n{head}{post}\r\n".encode("latin-1") + POST_BODY,
    }


class _Run:
    """What the connections of one run share: schedule, mix, and the records."""

    def __init__(self, spec: LoadSpec, target: Target) -> None:
        self.spec = spec
        self.target = target
        self.tls = tls_context(spec.check_cert) if target.tls else None
        self.server_name = server_name(spec.headers, target)
        self.requests = build_requests(spec, target)
        self.mix = Mix(spec.post_ratio, spec.long_ratio)
        self.origin = clock()
        self.started_at = time.time()
        self.pacer = Pacer(spec.rate, self.origin) if spec.rate else None
        self.stopping = asyncio.Event()
        self.samples: list[Sample] = []
        self.reconnects = 0
        self._versions: dict[str, str] = {}

    def stop(self) -> float:
        """Send no more requests; return the seconds since the origin."""
        self.stopping.set()
        return clock() - self.origin

    async def turn(self) -> bool:
        """Wait until the next request is due; False once the run is stopping."""
        if self.pacer is not None and not self.stopping.is_set():
            delay = self.pacer.delay(clock())
            if delay > 0:
                await self.pause(delay)
        return not self.stopping.is_set()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the run stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    def record(self, kind: RequestKind, start: float, outcome: Response | FailureKind) -> None:
        latency = clock() - start
        if isinstance(outcome, Response):
            # One string per version, not one per response: runs hold many samples.
            version = self._versions.setdefault(outcome.version or "-", outcome.version or "-")
            failure: FailureKind | None = "5xx" if outcome.status >= 500 else None
            sample = Sample(start - self.origin, latency, outcome.status, version, failure, kind)
        else:
            sample = Sample(start - self.origin, latency, 0, "-", outcome, kind)
        self.samples.append(sample)


class _Worker:
    """One connection's loop: a request at a time, reconnecting as needed."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.conn: Connection | None = None
        self.connecting = False  # so a timeout can tell a slow connect from a slow response

    async def loop(self) -> None:
        try:
            while await self.run.turn():
                kind = self.run.mix.next()
                start = clock()
                outcome = await self.attempt(self.run.requests[kind])
                self.run.record(kind, start, outcome)
                if outcome == "connect":
                    await self.run.pause(CONNECT_BACKOFF)
        finally:
            self.drop()

    async def attempt(self, request: bytes) -> Response | FailureKind:
        """Send one request (retried once in the keep-alive race); the response or why not."""
        try:
            async with asyncio.timeout(self.run.spec.timeout):
                return await self.exchange(request)
        except TimeoutError:
            failure: FailureKind = "connect" if self.connecting else "timeout"
        except ConnectFailed:
            failure = "connect"
        except ConnectionClosed:
            failure = "reset"
        except BadResponse:
            failure = "protocol"
        self.drop()  # whatever state the connection is in, it cannot carry another request
        return failure

    async def exchange(self, request: bytes) -> Response:
        conn = await self.connection()
        try:
            return await conn.send(request)
        except ConnectionClosed as exc:
            if not exc.before_response:
                raise
        # Once only, and on a fresh connection, where the race cannot happen:
        # a second failure is the server's.
        self.run.reconnects += 1
        self.drop()
        return await (await self.connection()).send(request)

    async def connection(self) -> Connection:
        """The open keep-alive connection, or a new one."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        if self.conn is not None:  # the server closed it between requests: not a failure
            self.run.reconnects += 1
        self.connecting = True
        target = self.run.target
        self.conn = await Connection.open(
            target.host, target.port, self.run.tls, server_name=self.run.server_name
        )
        self.connecting = False
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.abort()
        self.conn = None
        self.connecting = False


async def _until_stopped(
    stop: asyncio.Event | None, duration: float | None, workers: list[asyncio.Task[None]]
) -> None:
    """Return when `duration` passed or `stop` was set (or a worker crashed: a bug)."""
    waiter = asyncio.ensure_future((stop or asyncio.Event()).wait())
    try:
        await asyncio.wait(
            [waiter, *workers], timeout=duration, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()


async def _finish(workers: list[asyncio.Task[None]], grace: float) -> None:
    """Wait for the workers' last requests, cancel stragglers, re-raise a crash."""
    _, late = await asyncio.wait(workers, timeout=grace)
    for task in late:
        task.cancel()
    for outcome in await asyncio.gather(*workers, return_exceptions=True):
        if isinstance(outcome, Exception):
            raise outcome
