"""Desynchronisation (issue 8, items 1-4 and "Must show"): no client's bytes
reach the upstream as another request, and no client gets another's answer.

The property: for generated conversations of two or three clients, each
request tagged (`X-Tag: c<client>r<index>`) and carrying any mix of
hop-by-hop options (`Connection:` naming Content-Length, Host,
Transfer-Encoding, X-Forwarded-For, X-Request-ID, keep-alive, close, upgrade,
over one or two lines), upgrade headers (with and without
`Connection: upgrade`), chunked bodies with trailers (Host, Authorization,
Content-Length, X-Forwarded-For) and pipelined follow-ups in the same write,
sent interleaved through one proxy to one recording upstream:

- every request the upstream parses carries exactly one tag, of a request a
  client sent, once; its method, target and body are exactly what that client
  framed; its Host is that client's, its X-Forwarded-For and X-Request-ID the
  proxy's; no trailer joined its header section; a body that reads as a
  request (the smuggling payload) never becomes one;
- the upstream gets no byte after an upgrade request before it answers it, no
  byte on a connection whose upgrade it declined with a 200, none after an
  unsolicited 101, and after a 101 only what the client sent after its
  upgrade request;
- every response a client reads is strictly framed and echoes the tag of the
  request it answers, in order (or is one of the proxy's own 4xx/5xx; an
  unsolicited 101 is exactly a 502), and nothing follows a closing response;
- what the upstream answered and what the clients got match, client by client.

The upstream is a naive app on purpose: it parses with llhttp and keeps
reading after it declines an upgrade, so any byte the proxy did not frame
shows up as a request, as it would in a real app. It answers by the request's
own headers: `X-Answer` (ok, switch or decline an upgrade, or an unsolicited
101) and `X-Resp-Conn` (a `Connection:` option on its response, item 1's
response side), and echoes the tag and X-Request-ID it saw in `X-Echo` and
the body. The named tests below are the exact examples of items 1-4.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Final, cast

import httptools
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from harness import port_of, proxy, run, service
from zerodown.proxy.settings import ProxySettings

HOST: Final = "desync.test"
CLIENT_IP: Final = "127.0.0.1"  # untrusted: its X-Forwarded-* must be replaced
READ_DEADLINE: Final = 3.0  # a client waiting longer for an answer calls the proxy hung
EXAMPLE_DEADLINE: Final = 8.0
QUIET: Final = 0.05  # how long "nothing more arrives" is watched for
TUNNEL_LIFE: Final = 0.05  # the upstream closes a tunnel it agreed to after this
SETTINGS: Final = ProxySettings(
    header_timeout=1.0,
    body_timeout=1.0,
    keepalive_timeout=2.0,
    read_timeout=2.0,
    connect_timeout=1.0,
    queue_timeout=2.0,
)
# RFC 9110 §6.5.1: framing, routing and the proxy's own fields never come from a trailer.
PROXY_FIELDS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    }
)
# Values only trailers and smuggled requests carry: never in a forwarded head.
ATTACKER_VALUES: Final = ("evil.internal", "forged", "6.6.6.6")
TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
ROGUE_101: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nSet-Cookie: session=forged\r\nContent-Length: 0\r\n\r\n"
)


def client_host(client: int) -> str:
    """Each client has its own Host (same route), so the upstream can tell whose it got."""
    return f"{HOST}:{8000 + client}"


def greeting(tag: str) -> bytes:
    """What the upstream writes first in a tunnel it agreed to."""
    return b"tunnel:%s\n" % tag.encode()


def smuggle_payload(tag: str) -> bytes:
    """A body that is also a request, as in item 1: it must stay a body."""
    return (
        f"GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\nX-Tag: smuggled-{tag}\r\n"
        "X-Answer: ok\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    ).encode()


# -- the upstream: a naive app that records everything --------------------------------


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    wire: int
    order: int  # arrival order over all connections
    after: str = ""  # "declined" or "dead" when the connection should have ended before it
    method: str = ""
    path: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    upgrade: bool = False
    complete: bool = False

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def first(self, name: str) -> str:
        values = self.all(name)
        return values[0] if values else ""

    def echo(self) -> bytes:
        tags, ids = ",".join(self.all("x-tag")), ",".join(self.all("x-request-id"))
        return f"tag={tags};rid={ids};wire={self.wire}".encode()


@dataclass
class Wire:
    """One upstream connection: what it parsed and every byte that was not a request."""

    number: int
    requests: list[Seen] = field(default_factory=list)
    early: bytearray = field(default_factory=bytearray)  # with an upgrade head, before our answer
    tunnel: bytearray = field(default_factory=bytearray)  # after a 101 we chose to send
    tunnel_tag: str = ""
    after_end: bytearray = field(default_factory=bytearray)  # after a rogue 101 or our close
    errors: list[str] = field(default_factory=list)
    ended: bool = False


@dataclass
class RecordingBackend:
    """`targets` listening sockets (the same app behind each) sharing one record."""

    targets: int = 1
    tunnel_life: float = TUNNEL_LIFE
    wires: list[Wire] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _protocols: list[_Upstream] = field(default_factory=list)

    @property
    def requests(self) -> list[Seen]:
        return sorted((s for w in self.wires for s in w.requests), key=lambda s: s.order)

    async def start(self) -> RecordingBackend:
        loop = asyncio.get_running_loop()
        for _ in range(self.targets):
            server = await loop.create_server(lambda: _Upstream(self), "127.0.0.1", 0)
            self.addresses.append(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.close()
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.abort()

    def next_order(self) -> int:
        return next(self._order)


class _Upstream(asyncio.Protocol):
    def __init__(self, backend: RecordingBackend) -> None:
        backend._protocols.append(self)
        self.backend = backend
        self.wire = Wire(len(backend.wires))
        backend.wires.append(self.wire)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.mode = "http"  # "tunnel" after our 101; "dead" after a rogue 101 or our close
        self.after = ""
        self.seen: Seen | None = None
        self.in_trailers = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.ended = True

    def data_received(self, data: bytes) -> None:
        if self.mode == "tunnel":
            self.wire.tunnel += data
        elif self.mode == "dead":
            self.wire.after_end += data
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Answered already (on_message_complete): whatever came with the
            # head was written before the proxy could know the answer.
            rest = data[upgrade.args[0] :]
            self.wire.early += rest
            if self.mode == "tunnel":
                self.wire.tunnel += rest
                return
            # Declined: a naive app reads on, so stray bytes become requests.
            self.parser = httptools.HttpRequestParser(self)
            if rest:
                self._feed(rest)
        except httptools.HttpParserError as exc:
            self.wire.errors.append(f"{exc!r} in {data[:300]!r}")
            if self.transport is not None:
                self.transport.abort()

    # -- llhttp callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self.seen = Seen(self.wire.number, self.backend.next_order(), after=self.after)
        self.wire.requests.append(self.seen)
        self.in_trailers = False

    def on_url(self, url: bytes) -> None:
        assert self.seen is not None
        self.seen.path += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.seen is not None
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (self.seen.trailers if self.in_trailers else self.seen.headers).append(pair)

    def on_headers_complete(self) -> None:
        assert self.seen is not None
        self.in_trailers = True  # llhttp reports trailer fields through on_header too
        self.seen.method = self.parser.get_method().decode("latin-1")
        self.seen.upgrade = self.parser.should_upgrade()

    def on_body(self, body: bytes) -> None:
        assert self.seen is not None
        self.seen.body += body

    def on_message_complete(self) -> None:
        assert self.seen is not None
        assert self.transport is not None
        seen = self.seen
        seen.complete = True
        answer = seen.first("x-answer")
        if seen.upgrade and answer == "switch":
            self.mode = "tunnel"
            self.wire.tunnel_tag = seen.first("x-tag")
            upgrade = seen.first("upgrade").encode("latin-1")
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: %s\r\n"
                b"X-Echo: %s\r\n\r\n%s" % (upgrade, seen.echo(), greeting(seen.first("x-tag")))
            )
            # The app ends its side soon: that, not the client, closes the
            # tunnel, as a client's FIN is not passed through one.
            asyncio.get_running_loop().call_later(self.backend.tunnel_life, self.transport.close)
        elif seen.upgrade:
            self.after = "declined"
            self.transport.write(echo_response(seen.echo(), ""))
        elif answer == "rogue":
            self.mode = self.after = "dead"
            self.transport.write(ROGUE_101)
        else:
            option = seen.first("x-resp-conn")
            self.transport.write(echo_response(seen.echo(), option))
            if option == "close":
                self.mode = self.after = "dead"
                self.transport.close()


def echo_response(echo: bytes, option: str) -> bytes:
    """A 200 echoing the request; `option` puts a Connection option on it (item 1)."""
    if option == "transfer-encoding":
        return (
            b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\n"
            b"Transfer-Encoding: chunked\r\nX-Echo: %s\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (echo, len(echo), echo)
        )
    connection = {
        "": b"",
        "content-length": b"Connection: Content-Length\r\n",
        "x-hop": b"Connection: X-Hop\r\nX-Hop: 1\r\n",
        "keep-alive": b"Connection: keep-alive\r\n",
        "close": b"Connection: close\r\n",
    }[option]
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\nX-Echo: %s\r\n\r\n%s" % (
        connection,
        len(echo),
        echo,
        echo,
    )


# -- the requests -------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """One request a client sends; `raw` is exactly its bytes on the wire."""

    tag: str
    client: int
    method: str = "GET"
    path: str = "/"
    connection: tuple[tuple[str, ...], ...] = ()  # the options of each Connection line
    upgrade: str | None = None
    answer: str = "ok"  # the upstream's: ok, switch, decline, rogue
    framing: str = "none"  # none, length, chunked
    body: bytes = b""
    trailers: tuple[tuple[str, str], ...] = ()
    extras: tuple[tuple[str, str], ...] = ()
    respond: str = ""  # the Connection option of the upstream's response

    @property
    def host(self) -> str:
        return client_host(self.client)

    @property
    def options(self) -> frozenset[str]:
        return frozenset(o.lower() for line in self.connection for o in line)

    @property
    def asks_upgrade(self) -> bool:
        """What llhttp (so the proxy's client parser) takes for an upgrade request."""
        return self.upgrade is not None and "upgrade" in self.options

    @property
    def raw(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}", f"X-Tag: {self.tag}"]
        lines.append(f"X-Answer: {self.answer}")
        if self.respond:
            lines.append(f"X-Resp-Conn: {self.respond}")
        lines += [f"Connection: {', '.join(line)}" for line in self.connection]
        if self.upgrade is not None:
            lines.append(f"Upgrade: {self.upgrade}")
        lines += [f"{name}: {value}" for name, value in self.extras]
        if self.framing == "length":
            lines.append(f"Content-Length: {len(self.body)}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if self.framing != "chunked":
            return head + self.body
        half = len(self.body) // 2
        pieces = (self.body[:half], self.body[half:])
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
        trailers = "".join(f"{name}: {value}\r\n" for name, value in self.trailers).encode()
        return head + chunks + b"0\r\n" + trailers + b"\r\n"


# -- the clients ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    head: bytes
    body: bytes = b""

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def closes(self) -> bool:
        return any(
            t.strip().lower() == "close" for v in self.all("connection") for t in v.split(",")
        )

    @property
    def echo(self) -> dict[str, str] | None:
        values = self.all("x-echo")
        if not values:
            return None
        assert len(values) == 1, f"two echoes in one response: {self.head!r}"
        return dict(part.partition("=")[::2] for part in values[0].split(";"))


async def read_reply(reader: asyncio.StreamReader) -> Reply | None:
    """One response, strictly framed (RFC 9112 §6.3); None at a clean end of stream."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # a clean end of stream is None; a cut inside a head is not
                raise AssertionError(
                    f"the stream ended inside a response head: {exc.partial!r}"
                ) from exc
            return None
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*", status_line)
        assert match, f"not a status line: {status_line!r} (a desynchronised stream?)"
        headers = []
        for line in lines:
            name, sep, value = line.partition(":")
            assert sep, f"a malformed header line {line!r}"
            assert TOKEN_RE.fullmatch(name), f"a malformed header line {line!r}"
            headers.append((name, value.strip()))
        reply = Reply(int(match[1]), headers, head)
        if reply.status == 101:
            return reply
        if reply.status >= 200:
            reply.body = await _read_body(reader, reply)
            return reply


async def _read_body(reader: asyncio.StreamReader, reply: Reply) -> bytes:
    lengths, codings = reply.all("content-length"), reply.all("transfer-encoding")
    assert not (lengths and codings), f"both Content-Length and Transfer-Encoding: {reply.head!r}"
    if lengths:
        assert len(lengths) == 1, f"bad Content-Length: {reply.head!r}"
        assert lengths[0].isdigit(), f"bad Content-Length: {reply.head!r}"
        return await reader.readexactly(int(lengths[0]))
    if codings:
        assert [c.lower() for c in codings] == ["chunked"], f"bad framing: {reply.head!r}"
        return await _dechunk(reader)
    assert reply.closes, f"a response with no framing on a kept-alive connection: {reply.head!r}"
    return await reader.read()


async def _dechunk(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = (await reader.readuntil(b"\r\n"))[:-2].split(b";")[0]
        assert re.fullmatch(rb"[0-9a-fA-F]{1,8}", size), f"a bad chunk size {size!r}"
        if int(size, 16) == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # response trailers
            return bytes(body)
        body += await reader.readexactly(int(size, 16))
        assert await reader.readexactly(2) == b"\r\n", "a chunk not followed by CRLF"


@dataclass
class Client:
    """One raw client connection: what it wrote and everything it read."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    written: list[Req] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    end: str = ""  # answered, close (announced), eof or reset (unannounced), tunnel
    greeting: bytes = b""
    extra: bytes = b""  # bytes after a closing response, or after the last answer

    @classmethod
    async def connect(cls, port: int, number: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(number, reader, writer)

    async def send(self, requests: list[Req]) -> None:
        if self.writer.is_closing():
            return  # closed by us after a tunnel opened: these were never sent
        self.written += requests
        self.writer.write(b"".join(r.raw for r in requests))
        # The proxy may have closed; what it answered before is still readable.
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def converse(self, planned: int) -> None:
        """Read answers until `planned` came, the proxy closed, or a tunnel opened."""
        try:
            async with asyncio.timeout(READ_DEADLINE):
                await self._read_answers(planned)
        except TimeoutError:
            raise AssertionError(
                f"client {self.number} waited {READ_DEADLINE}s for answer "
                f"{len(self.replies) + 1} of {[r.tag for r in self.written]}: "
                f"the proxy neither answered nor closed"
            ) from None
        except ConnectionResetError:
            self.end = self.end or "reset"
        except asyncio.IncompleteReadError as exc:
            raise AssertionError(
                f"client {self.number}: a response cut short after {exc.partial[-200:]!r}"
            ) from None

    async def _read_answers(self, planned: int) -> None:
        while len(self.replies) < planned:
            reply = await read_reply(self.reader)
            if reply is None:
                self.end = "eof"
                return
            self.replies.append(reply)
            if reply.status == 101:
                self.end = "tunnel"
                self.greeting = await self.reader.readuntil(b"\n")
                self.extra = await self.reader.read()  # the upstream ends the tunnel
                return
            if reply.closes:
                # A reset may follow (pipelined bytes the proxy did not read).
                self.end = "close"
                self.extra = await self.reader.read()
                return
        self.end = "answered"
        with contextlib.suppress(TimeoutError):
            self.extra = await asyncio.wait_for(self.reader.read(65536), QUIET)

    def close(self) -> None:
        self.writer.close()


# -- one conversation ---------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    clients: tuple[tuple[tuple[Req, ...], ...], ...]  # per client, its writes
    schedule: tuple[tuple[int, int, bool], ...]  # (client, write, pause after)
    max_conns: int  # 1: every request shares one upstream connection
    targets: int = 1
    tunnel_life: float = TUNNEL_LIFE

    def planned(self, client: int) -> int:
        return sum(len(write) for write in self.clients[client])


@dataclass
class Outcome:
    clients: list[Client]
    wires: list[Wire]
    backend: RecordingBackend


async def play(scenario: Scenario) -> Outcome:
    backend = await RecordingBackend(scenario.targets, scenario.tunnel_life).start()
    settings = replace(SETTINGS, max_conns_per_target=scenario.max_conns)
    clients: list[Client] = []
    readers: list[asyncio.Task[None]] = []
    try:
        async with proxy(service(*backend.addresses, passive=None), settings=settings) as server:
            for number in range(len(scenario.clients)):
                clients.append(await Client.connect(port_of(server), number))
            readers = [asyncio.create_task(c.converse(scenario.planned(c.number))) for c in clients]
            for number, write, pause in scenario.schedule:
                await clients[number].send(list(scenario.clients[number][write]))
                if pause:
                    await asyncio.sleep(0.002)
            await asyncio.gather(*readers)
            for client in clients:
                client.close()
        await _settle(backend)
    finally:
        for task in readers:
            task.cancel()
        for client in clients:
            client.close()
        backend.stop()
    return Outcome(clients, backend.wires, backend)


async def _settle(backend: RecordingBackend) -> None:
    """Let what the proxy wrote last reach the upstream (the proxy has stopped)."""
    for _ in range(100):  # 0.5 s at most; what has not arrived by then is judged as is
        if all(w.ended for w in backend.wires):
            return
        await asyncio.sleep(0.005)


def play_and_verify(scenario: Scenario) -> Outcome:
    async def bounded() -> Outcome:
        try:
            async with asyncio.timeout(EXAMPLE_DEADLINE):
                return await play(scenario)
        except TimeoutError:
            raise AssertionError(f"the example took over {EXAMPLE_DEADLINE}s") from None

    outcome = run(bounded())
    verify(outcome)
    return outcome


# -- the checks ---------------------------------------------------------------------


def verify(outcome: Outcome) -> None:
    sent = {r.tag: r for c in outcome.clients for r in c.written}
    for wire in outcome.wires:
        check_wire(wire, sent, outcome.clients)
    for client in outcome.clients:
        check_client(client)
    check_counts(outcome, sent)


def check_wire(wire: Wire, sent: dict[str, Req], clients: list[Client]) -> None:
    where = f"upstream connection {wire.number}"
    assert not wire.errors, f"{where} could not parse what the proxy sent: {wire.errors}"
    assert not wire.early, (
        f"{where}: bytes after an upgrade request were written before the upstream "
        f"answered it (item 2): {bytes(wire.early)[:300]!r}"
    )
    assert not wire.after_end, (
        f"{where}: bytes after a response that ended the connection (an unsolicited 101, "
        f"item 4, or Connection: close): {bytes(wire.after_end)[:300]!r}"
    )
    for seen in wire.requests:
        check_seen(seen, sent)
    if wire.tunnel:
        req = sent[wire.tunnel_tag]
        client = clients[req.client]
        after = b"".join(r.raw for r in client.written[client.written.index(req) + 1 :])
        assert bytes(wire.tunnel) == after[: len(wire.tunnel)], (
            f"{where}: the tunnel of {req.tag} carried {bytes(wire.tunnel)[:300]!r}, "
            f"not what its client sent after the upgrade: {after[:300]!r}"
        )


ENDED_BY: Final = {
    "declined": "its upgrade was declined with a 200, so it must not be reused (item 2)",
    "dead": "it carried an unsolicited 101 (item 4) or the upstream's Connection: close",
}


def check_seen(seen: Seen, sent: dict[str, Req]) -> None:
    where = f"upstream connection {seen.wire}, request {seen.order} ({seen.method} {seen.path})"
    tags = seen.all("x-tag")
    assert len(tags) == 1, f"{where} carries tags {tags}: not exactly one client request"
    req = sent.get(tags[0])
    assert req is not None, (
        f"{where}: a request no client sent reached the upstream (smuggled): {seen}"
    )
    where += f" [{req.tag}]"
    assert seen.after == "", (
        f"{where} came on a connection that should have ended: {ENDED_BY[seen.after]}: {seen}"
    )
    assert (seen.method, seen.path) == (req.method, req.path), f"{where}: sent {req.raw!r}"
    assert seen.all("host") == [req.host], (
        f"{where}: Host {seen.all('host')}, the client sent {req.host} (items 1 and 3)"
    )
    assert seen.all("x-forwarded-for") == [CLIENT_IP], (
        f"{where}: X-Forwarded-For {seen.all('x-forwarded-for')} is not the proxy's (items 1, 3)"
    )
    assert len(seen.all("x-request-id")) == 1, f"{where}: X-Request-ID {seen.all('x-request-id')}"
    for name, value in seen.headers:
        assert name.lower() not in ("authorization", "x-trailer"), (
            f"{where}: the trailer {name}: {value} joined the header section (item 3)"
        )
        assert not any(bad in value for bad in ATTACKER_VALUES), (
            f"{where}: {name}: {value} came from a trailer or a smuggled request (items 1, 3)"
        )
    lengths, codings = seen.all("content-length"), seen.all("transfer-encoding")
    assert len(lengths) + len(codings) <= 1, f"{where}: framing {lengths} {codings}"
    if req.body:
        assert lengths or codings, f"{where}: a body forwarded without framing (item 1)"
    if seen.complete:
        assert seen.body == req.body, f"{where}: body {seen.body[:200]!r}, sent {req.body[:200]!r}"
    else:
        assert req.body.startswith(seen.body), f"{where}: body {seen.body[:200]!r}"
    for name, value in seen.trailers:
        assert name.lower() not in PROXY_FIELDS, (
            f"{where}: a trailer carries {name}, a field the proxy controls (item 3)"
        )
        assert (name, value) in req.trailers, f"{where}: trailer {name}: {value} was never sent"


def check_client(client: Client) -> None:
    assert len(client.replies) <= len(client.written), (
        f"client {client.number} got {len(client.replies)} answers to "
        f"{len(client.written)} requests"
    )
    for index, reply in enumerate(client.replies):
        check_reply(client, index, reply)
    assert b"forged" not in client.greeting + client.extra, (
        f"client {client.number} got the upstream's forged bytes (item 4): {client.extra!r}"
    )
    assert client.extra == b"", (
        f"client {client.number} got bytes after its last answer ({client.end}): "
        f"{client.extra[:300]!r}"
    )
    if client.end in ("eof", "reset"):
        last = client.written[len(client.replies) - 1] if client.replies else None
        said = (
            f"client {client.number}: the proxy closed without Connection: close after "
            f"{len(client.replies)} of {[r.tag for r in client.written]}: "
            f"{[r.head for r in client.replies]}"
        )
        assert last is not None, said
        assert last.asks_upgrade or last.answer == "rogue", said


def check_reply(client: Client, index: int, reply: Reply) -> None:
    req = client.written[index]
    where = f"client {client.number}, answer {index + 1} (to {req.tag})"
    assert b"forged" not in reply.head + reply.body, (
        f"{where}: the upstream's forged bytes reached the client (item 4): {reply.head!r}"
    )
    echo = reply.echo
    if echo is None:
        assert 400 <= reply.status < 600, f"{where}: {reply.status} without the upstream's echo"
        assert reply.body.startswith(b"%d " % reply.status), f"{where}: not the proxy's own error"
        return
    assert echo.get("tag") == req.tag, (
        f"{where}: got the response to {echo.get('tag')!r} (another request): {reply.head!r}"
    )
    assert [echo.get("rid")] == reply.all("x-request-id"), f"{where}: {reply.head!r}"
    assert req.answer != "rogue", f"{where}: an unsolicited 101 went through (item 4)"
    if reply.status == 101:
        assert req.answer == "switch", f"{where}: a 101 nobody asked for"
        assert client.greeting == greeting(req.tag), f"{where}: tunnel said {client.greeting!r}"
        return
    assert reply.status == 200, f"{where}: {reply.head!r}"
    assert reply.body.startswith(b"tag=%s;" % req.tag.encode()), f"{where}: {reply.body!r}"


def check_rogue(client: Client, req: Req, seen: Seen) -> None:
    """The upstream answered `req` with an unsolicited 101: the client gets a 502."""
    index = client.written.index(req)
    if seen.complete and index < len(client.replies):
        status = client.replies[index].status
        assert status == 502, f"{req.tag}: an unsolicited 101 became a {status}, not a 502 (item 4)"


def check_counts(outcome: Outcome, sent: dict[str, Req]) -> None:
    """What the upstream answered is what the clients got, client by client, in order."""
    arrived: dict[int, list[str]] = {c.number: [] for c in outcome.clients}
    counted: set[str] = set()
    for seen in outcome.backend.requests:
        req = sent[seen.first("x-tag")]
        if req.answer == "rogue":
            check_rogue(outcome.clients[req.client], req, seen)
            continue  # a retry may send it twice; each copy was checked above
        assert req.tag not in counted, f"{req.tag} reached the upstream twice"
        counted.add(req.tag)
        if seen.complete:
            arrived[req.client].append(req.tag)
        else:
            replies = outcome.clients[req.client].replies
            index = outcome.clients[req.client].written.index(req)
            assert index >= len(replies) or replies[index].echo is None, (
                f"{req.tag} arrived incomplete but was answered by the upstream"
            )
    for client in outcome.clients:
        echoed = [r.echo["tag"] for r in client.replies if r.echo is not None]
        assert echoed == arrived[client.number], (
            f"client {client.number}: the upstream answered {arrived[client.number]}, "
            f"the client got answers for {echoed}"
        )


# -- generating conversations ----------------------------------------------------------

OPTIONS = st.sampled_from(
    [
        "Content-Length",
        "content-length",
        "Host",
        "Transfer-Encoding",
        "X-Forwarded-For",
        "X-Request-ID",
        "keep-alive",
        "close",
        "upgrade",
        "Upgrade",
        "X-Hop",
    ]
)
TRAILERS = st.sampled_from(
    [
        ("Host", "evil.internal"),
        ("Authorization", "Bearer forged"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Content-Length", "999"),
        ("X-Trailer", "forged"),
    ]
)
RESPONSE_OPTIONS = [
    "",
    "",
    "",
    "content-length",
    "transfer-encoding",
    "x-hop",
    "keep-alive",
    "close",
]


@st.composite
def connection_lines(draw: st.DrawFn, upgrade: str | None) -> tuple[tuple[str, ...], ...]:
    options = draw(st.lists(OPTIONS, max_size=3, unique_by=str.lower))
    if upgrade is not None and draw(st.booleans()) and "upgrade" not in map(str.lower, options):
        options.insert(draw(st.integers(0, len(options))), "upgrade")
    # Split over two Connection lines: the options of both count (RFC 9110 §5.3).
    cut = draw(st.integers(0, len(options))) if len(options) > 1 else len(options)
    return tuple(line for line in (tuple(options[:cut]), tuple(options[cut:])) if line)


@st.composite
def requests(draw: st.DrawFn, client: int, index: int) -> Req:
    tag = f"c{client}r{index}"
    upgrade = draw(st.sampled_from([None, None, "foo", "websocket", "h2c"]))
    req = Req(tag, client, upgrade=upgrade, connection=draw(connection_lines(upgrade)))
    extras = draw(
        st.lists(
            st.sampled_from(
                [("X-Forwarded-For", "6.6.6.6"), ("X-Request-ID", f"rid-{tag}"), ("X-Hop", "1")]
            ),
            max_size=3,
            unique=True,
        )
    )
    req = replace(req, extras=tuple(extras))
    if req.asks_upgrade:  # bodiless: llhttp hands a body after an upgrade head to the tunnel
        return replace(req, answer=draw(st.sampled_from(["switch", "decline"])))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    if framing != "none":
        body = draw(st.one_of(st.binary(max_size=40), st.just(smuggle_payload(tag))))
    answer = draw(st.sampled_from(["ok"] * 9 + ["rogue"]))
    return replace(
        req,
        method=draw(st.sampled_from(["GET", "POST", "PUT"])),
        path=draw(st.sampled_from(["/", "/a?b=c", f"/{tag}"])),
        answer=answer,
        framing=framing,
        body=body,
        trailers=tuple(draw(st.lists(TRAILERS, max_size=3, unique=True)))
        if framing == "chunked"
        else (),
        respond=draw(st.sampled_from(RESPONSE_OPTIONS)) if answer == "ok" else "",
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    clients = []
    for client in range(draw(st.integers(2, 3))):
        index = itertools.count(1)
        writes = []
        for size in draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)):
            writes.append(tuple(draw(requests(client, next(index))) for _ in range(size)))
        clients.append(tuple(writes))
    left = [len(writes) for writes in clients]
    schedule = []
    while any(left):
        number = draw(st.sampled_from([n for n, count in enumerate(left) if count]))
        schedule.append((number, len(clients[number]) - left[number], draw(st.booleans())))
        left[number] -= 1
    return Scenario(tuple(clients), tuple(schedule), draw(st.sampled_from([1, 0])))


# -- the property -----------------------------------------------------------------------

DESYNC = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run and in CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # A failure is shrunk to one minimal conversation, within pytest's timeout:
    # the explain phase traces every line (slow before Python 3.12), and
    # shrinking each distinct bug separately would take minutes.
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
)


@DESYNC
@given(scenario=scenarios())
def test_no_byte_reaches_the_upstream_unframed_and_no_client_gets_anothers_answer(
    scenario: Scenario,
) -> None:
    for feature in features(scenario):
        event(feature)  # pytest --hypothesis-show-statistics shows what was covered
    play_and_verify(scenario)


def features(scenario: Scenario) -> set[str]:
    found = {f"max_conns={scenario.max_conns}"}
    for writes in scenario.clients:
        for write in writes:
            for index, req in enumerate(write):
                if req.asks_upgrade:
                    found.add(f"upgrade {req.answer}")
                    if index + 1 < len(write):
                        found.add(f"upgrade {req.answer}, then a request in the same write")
                if req.body and {"content-length", "transfer-encoding"} & req.options:
                    found.add("Connection names the framing of a body")
                if {"host", "x-forwarded-for", "x-request-id"} & req.options:
                    found.add("Connection names a field the proxy sets")
                if len(req.connection) > 1:
                    found.add("two Connection lines")
                if req.trailers:
                    found.add("trailers")
                if req.body == smuggle_payload(req.tag):
                    found.add("a body that is a request")
                if req.answer == "rogue":
                    found.add("an unsolicited 101")
                if req.respond in ("content-length", "transfer-encoding"):
                    found.add("a response's Connection names its framing")
    return found


# -- the examples of issue 8, one test each -----------------------------------------------


def one(writes: list[list[Req]], *others: list[list[Req]]) -> Scenario:
    """Client 0 writes each of `writes` (in turn), then every other client its writes."""
    clients = (tuple(tuple(w) for w in writes), *(tuple(tuple(w) for w in o) for o in others))
    schedule = tuple((n, w, True) for n, c in enumerate(clients) for w in range(len(c)))
    return Scenario(clients, schedule, max_conns=1)


def echo_tags(client: Client) -> list[str]:
    return [r.echo["tag"] for r in client.replies if r.echo is not None]


def smuggler(option: str) -> Req:
    return Req(
        "c0r1",
        0,
        method="POST",
        connection=((option,),),
        framing="length",
        body=smuggle_payload("c0r1"),
        extras=(("X-Forwarded-For", "6.6.6.6"),),
    )


@pytest.mark.parametrize("option", ["Content-Length", "Transfer-Encoding"])
def test_item1_a_connection_option_cannot_unframe_a_request_body(option: str) -> None:
    """`Connection: Content-Length` + a body that is a request: the upstream must
    get one request with that body (or none, after a 400), never two; the next
    client on the same upstream connection gets its own answer."""
    req = smuggler(option)
    if option == "Transfer-Encoding":
        req = replace(req, framing="chunked")
    victim = Req("c1r1", 1)
    outcome = play_and_verify(one([[req]], [[victim]]))
    tags = [s.first("x-tag") for s in outcome.backend.requests]
    assert tags in (["c0r1", "c1r1"], ["c1r1"]), tags
    assert [r.status for r in outcome.clients[0].replies] in ([200], [400])
    assert [echo_tags(c) for c in outcome.clients] in ([["c0r1"], ["c1r1"]], [[], ["c1r1"]])


@pytest.mark.parametrize("option", ["Host", "X-Forwarded-For", "X-Request-ID"])
def test_item1_a_connection_option_cannot_remove_a_field_the_proxy_sets(option: str) -> None:
    """`Connection: Host` (or X-Forwarded-For, X-Request-ID): the upstream still
    gets the client's Host and the proxy's own X-Forwarded-For and X-Request-ID."""
    req = Req(
        "c0r1",
        0,
        connection=((option,),),
        extras=(("X-Forwarded-For", "6.6.6.6"), ("X-Request-ID", "rid-c0r1")),
    )
    outcome = play_and_verify(one([[req]]))
    (seen,) = outcome.backend.requests
    assert seen.all("host") == [client_host(0)]
    assert seen.all("x-forwarded-for") == [CLIENT_IP]
    assert len(seen.all("x-request-id")) == 1


@pytest.mark.parametrize("option", ["content-length", "transfer-encoding"])
def test_item1_a_response_connection_option_cannot_unframe_the_response(option: str) -> None:
    """The upstream answers `Connection: Content-Length`: the client must still get
    a framed response (or a close-delimited one it is told ends the connection),
    and the pipelined request after it its own answer."""
    first, second = Req("c0r1", 0, respond=option), Req("c0r2", 0)
    outcome = play_and_verify(one([[first, second]]))
    client = outcome.clients[0]
    assert echo_tags(client) in (["c0r1", "c0r2"], ["c0r1"])
    assert client.end in ("answered", "close")


def upgrade_then_follow_up(answer: str) -> Scenario:
    upgrade = Req("c0r1", 0, connection=(("Upgrade",),), upgrade="foo", answer=answer)
    follow_up = Req("c0r2", 0, method="POST", framing="length", body=b"second")
    # The tunnel lives long enough for the held bytes to pass on a busy machine.
    return replace(one([[upgrade, follow_up]], [[Req("c1r1", 1)]]), tunnel_life=1.0)


def test_item2_bytes_after_a_declined_upgrade_are_never_forwarded_raw() -> None:
    """`Connection: Upgrade, Upgrade: foo` and a second request in the same write;
    the upstream answers 200: the second request is either answered in order
    (sent as a request of its own) or the connection closes; that upstream
    connection is never reused, and the next client gets its own answer."""
    outcome = play_and_verify(upgrade_then_follow_up("decline"))
    assert echo_tags(outcome.clients[0]) in (["c0r1", "c0r2"], ["c0r1"])
    assert echo_tags(outcome.clients[1]) == ["c1r1"]
    (declined,) = [w for w in outcome.wires if w.requests and w.requests[0].upgrade]
    assert [s.first("x-tag") for s in declined.requests] == ["c0r1"]
    assert declined.early == declined.after_end == b""


def test_item2_bytes_after_an_upgrade_request_wait_for_the_101() -> None:
    """The same, answered 101: the second request's bytes reach the upstream only
    after the 101, as tunnel bytes, exactly."""
    scenario = upgrade_then_follow_up("switch")
    outcome = play_and_verify(scenario)
    (tunnel,) = [w for w in outcome.wires if w.tunnel_tag == "c0r1"]
    assert tunnel.early == b""
    assert bytes(tunnel.tunnel) == scenario.clients[0][0][1].raw
    assert [r.status for r in outcome.clients[0].replies] == [101]
    assert echo_tags(outcome.clients[1]) == ["c1r1"]


def test_item3_trailers_never_join_the_forwarded_head() -> None:
    """A chunked body's trailers Host, Authorization and X-Forwarded-For: the
    upstream's header section has the client's Host and the proxy's
    X-Forwarded-For, no Authorization; trailers pass, if at all, after the body."""
    req = Req(
        "c0r1",
        0,
        method="POST",
        framing="chunked",
        body=b"hello world",
        trailers=(
            ("Host", "evil.internal"),
            ("Authorization", "Bearer forged"),
            ("X-Forwarded-For", "6.6.6.6"),
        ),
    )
    outcome = play_and_verify(one([[req]]))
    (seen,) = outcome.backend.requests
    assert seen.all("host") == [client_host(0)]
    assert seen.all("authorization") == []
    assert seen.all("x-forwarded-for") == [CLIENT_IP]
    assert seen.body == b"hello world"
    assert {n.lower() for n, _ in seen.trailers} <= {"authorization"}


@pytest.mark.parametrize("targets", [1, 2])
def test_item4_an_unsolicited_101_is_a_502_and_nothing_else(targets: int) -> None:
    """The upstream answers a plain GET with a 101 and a forged response: the
    client gets one 502 and not a byte of the forgery, the upstream connection
    nothing more; with two such targets (a retry) the same."""
    scenario = replace(one([[Req("c0r1", 0, answer="rogue")]]), targets=targets)
    outcome = play_and_verify(scenario)
    (client,) = outcome.clients
    assert [r.status for r in client.replies] == [502]
    assert client.extra == b""
    assert all(w.after_end == b"" for w in outcome.wires)
    assert 1 <= len(outcome.backend.requests) <= targets
