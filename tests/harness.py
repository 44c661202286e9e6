"""Real-socket test harness: small backends on port 0, a proxy in front of
them, and a raw HTTP client that returns exactly what came over the wire.

Backends are plain asyncio servers whose behaviour a test sets per request
(a handler returns the raw response bytes, or an Action for misbehaviour),
so each nginx-tests idea can be ported as the exact byte exchange it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import httptools
import uvloop

from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

T = TypeVar("T")
DEADLINE = 10.0  # no test waits longer than this for anything


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test coroutine on uvloop, as the proxy runs in production."""
    return uvloop.run(asyncio.wait_for(coro, DEADLINE * 3))


# -- parsing -----------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Collector:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._cur: dict[str, Any] = {}

    def on_message_begin(self) -> None:
        self._cur = {"url": b"", "headers": [], "body": bytearray(), "complete": False}
        self.messages.append(self._cur)

    def on_url(self, url: bytes) -> None:
        self._cur["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._cur["headers"].append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._cur["headers_done"] = True

    def on_body(self, body: bytes) -> None:
        self._cur["body"] += body

    def on_message_complete(self) -> None:
        self._cur["complete"] = True


def parse_responses(raw: bytes, head_requests: int = 0) -> list[Response]:
    """Split a byte stream into responses (close-delimited last body allowed)."""
    responses: list[Response] = []
    rest = raw
    while rest:
        collector = _Collector()
        parser = httptools.HttpResponseParser(collector)
        try:
            parser.feed_data(rest)
        except httptools.HttpParserUpgrade as up:
            msg = collector.messages[0]
            responses.append(
                Response(parser.get_status_code(), msg["headers"], rest[up.args[0] :], rest)
            )
            return responses
        msg = collector.messages[0]
        status = parser.get_status_code()
        responses.append(Response(status, msg["headers"], bytes(msg["body"]), rest))
        if not msg["complete"] or len(collector.messages) == 1:
            break
        # More than one message: find where the second began by re-parsing sizes.
        consumed = _message_length(rest)
        rest = rest[consumed:]
    return responses


def _message_length(raw: bytes) -> int:
    """Length of the first complete response in raw (by feeding byte ranges)."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    for i in range(len(raw)):
        parser.feed_data(raw[i : i + 1])
        if collector.messages and collector.messages[0]["complete"]:
            return i + 1
    return len(raw)


# -- client --------------------------------------------------------------------


async def exchange(
    port: int, raw: bytes, *, read_until_close: bool = True, host: str = "127.0.0.1"
) -> bytes:
    """Send raw bytes, return everything the proxy sent back until it closed."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    data = b""
    try:
        async with asyncio.timeout(DEADLINE):
            if read_until_close:
                data = await reader.read(-1)
            else:
                data = await reader.read(65536)
    finally:
        writer.close()
    return data


async def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "example.test",
) -> Response:
    """One request with Connection: close; returns the parsed response."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    data = await exchange(port, raw)
    responses = parse_responses(data)
    assert responses, f"no response to {method} {path}: {data!r}"
    return responses[0]


class KeepAliveClient:
    """One client connection reused for several requests, in order."""

    def __init__(self, port: int, host: str = "example.test") -> None:
        self.port = port
        self.host = host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        assert self.reader is not None
        assert self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await read_response(self.reader, head=method == "HEAD")


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Response:
    """Read exactly one response from a stream (Content-Length or chunked)."""
    async with asyncio.timeout(DEADLINE):
        raw_head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")[:-2]
        status = int(status_line.split(" ")[1])
        headers = [tuple(h.split(": ", 1)) for h in header_lines]
        response = Response(status, [(k, v) for k, v in headers])
        if head or status in (204, 304) or 100 <= status < 200:
            return response
        length = response.header("content-length")
        if length is not None:
            response.body = await reader.readexactly(int(length))
        elif (response.header("transfer-encoding") or "").lower() == "chunked":
            response.body = await _read_chunked(reader)
        else:
            response.body = await reader.read(-1)
        return response


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


# -- backends --------------------------------------------------------------------


Handler = Callable[[Request], Awaitable["bytes | Action"]]


@dataclass
class Action:
    """Misbehaviour instead of a response."""

    close: bool = False  # close the connection without answering
    reset: bool = False  # abort (RST) without answering
    partial: bytes = b""  # write these bytes, then close
    hang: bool = False  # never answer


def ok(body: bytes = b"ok", status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Backend:
    """A tiny HTTP/1.1 server; `handler` decides each answer. Counts everything."""

    name: str = "b"
    handler: Handler | None = None
    close_after: int = 0  # close the connection after this many responses (0: keep alive)
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            self._server = None

    async def restart(self) -> None:
        """Serve again on the same port, after stop()."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        served = 0
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                self.requests.append(req)
                answer = await (self.handler or _default_handler(self.name))(req)
                if isinstance(answer, Action):
                    await _misbehave(answer, writer)
                    return
                writer.write(answer)
                await writer.drain()
                served += 1
                if self.close_after and served >= self.close_after:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


def _default_handler(name: str) -> Handler:
    async def handle(req: Request) -> bytes:
        return ok(name.encode(), headers={"X-Backend": name})

    return handle


async def _misbehave(action: Action, writer: asyncio.StreamWriter) -> None:
    if action.partial:
        writer.write(action.partial)
        await writer.drain()
    if action.hang:
        await asyncio.sleep(DEADLINE * 2)
    if action.reset:
        writer.transport.abort()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *rest = head.decode("latin-1").split("\r\n")[:-2]
    method, path, version = line.split(" ")
    headers = [(k, v) for k, v in (h.split(": ", 1) for h in rest)]
    req = Request(method, path, version, headers)
    length = req.header("content-length")
    if length:
        req.body = await reader.readexactly(int(length))
    elif (req.header("transfer-encoding") or "").lower() == "chunked":
        req.body = await _read_chunked(reader)
    return req


# -- the proxy ---------------------------------------------------------------------


def service(
    *addresses: str,
    name: str = "web",
    canary: tuple[str, ...] = (),
    **spec: Any,
) -> ServiceSpec:
    """A ServiceSpec with these targets in its stable pool (health checks off by default)."""
    spec.setdefault("health", None)
    return ServiceSpec(
        name=name,
        stable=PoolSpec(targets=tuple(TargetSpec(address=a) for a in addresses)),
        canary=PoolSpec(targets=tuple(TargetSpec(address=a) for a in canary)),
        **spec,
    )


@contextlib.asynccontextmanager
async def proxy(
    *services: ServiceSpec, settings: ProxySettings | None = None
) -> AsyncIterator[ProxyServer]:
    """A ProxyServer on 127.0.0.1:0 with these services; stopped on exit."""
    server = ProxyServer(settings or ProxySettings(), RoutingTable(services=services))
    await server.start(["127.0.0.1:0"])
    try:
        yield server
    finally:
        await server.stop(timeout=1.0)


def port_of(server: ProxyServer) -> int:
    return server.addresses[0][1]


@contextlib.asynccontextmanager
async def backends(*names: str, **kwargs: Any) -> AsyncIterator[list[Backend]]:
    started = [await Backend(name=n, **kwargs).start() for n in names]
    try:
        yield started
    finally:
        for b in started:
            await b.stop()


async def until(
    condition: Callable[[], bool], what: str, timeout: float = 2.0, every: float = 0.002
) -> None:
    """Poll `condition` every few ms; fail the test if it is not met by the deadline.

    For state the test cannot be told about (another process, a thread, code
    with no hook): where an event exists, await it instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(every)


# -- backends that count what ended or only record ---------------------------------


@dataclass
class ClosingBackend(Backend):
    """A harness Backend that also counts connections that ended (by either side)."""

    closed: int = 0
    _closed_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        finally:
            self.closed += 1
            self._closed_event.set()


@dataclass
class RawBackend:
    """Records every byte each connection delivered; answers nothing until told."""

    received: list[bytearray] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(bytearray())
        self.ended.append(False)
        try:
            while data := await reader.read(65536):
                self.received[index] += data
        except ConnectionError:
            pass
        finally:
            self.ended[index] = True
            writer.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


# -- ports for processes that must be told theirs ---------------------------------

# A `zerodown serve` in a test needs its ports written in its config, and
# across its restarts; port 0 cannot do that. A port from port 0 (the
# ephemeral range) can be handed by the kernel to any outgoing connection
# between the pick and the bind, so these come from below the ephemeral
# range (32768-60999 on Linux) and above the instance ranges the tests use
# (20000-32767). Each is reserved with a lock file, so test processes running
# at once never pick the same one, and checked free, so a port someone else
# holds is skipped.
RESERVED_PORTS = range(12000, 20000)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "zerodown-test-ports"
_held: list[int] = []  # lock file descriptors, held for this process's life


def release_reserved_ports() -> None:
    """Let other test processes have this one's ports again (after each test:
    tests/conftest.py). Held for a whole run, 200-port windows per e2e test
    used up both the range and the process's file descriptors."""
    while _held:
        os.close(_held.pop())


def reserved_port() -> int:
    """A port no other test process picks and nothing listens on now."""
    return reserved_ports(1)[0]


def reserved_ports(count: int) -> tuple[int, int]:
    """`count` ports in a row (first, last), reserved as reserved_port() reserves one:
    for a service's `ports` range, where instances of a test's daemon listen."""
    _PORT_LOCKS.mkdir(exist_ok=True)
    starts = list(range(RESERVED_PORTS.start, RESERVED_PORTS.stop - count + 1, count))
    random.shuffle(starts)
    for start in starts:
        fds = [fd for fd in map(_lock, range(start, start + count)) if fd is not None]
        if len(fds) == count:
            _held.extend(fds)
            return start, start + count - 1
        for fd in fds:
            os.close(fd)
    raise RuntimeError(f"no {count} free ports in a row in {RESERVED_PORTS}")


def _lock(port: int) -> int | None:
    """The lock file's descriptor, held, if no other test process holds it and the port is free."""
    fd = os.open(_PORT_LOCKS / str(port), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # another test process has it
        return None
    if not _bindable(port):
        os.close(fd)
        return None
    return fd


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
