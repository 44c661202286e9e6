"""Fuzzing the request path (issue 2, point 11): hypothesis writes request
heads and bodies, valid and mangled, and sends them to a live proxy in front
of a counting backend. Properties, for every input:

- every byte the client gets back is a well-formed HTTP/1.1 response, with
  a status from the backend (2xx, marked X-Backend) or one of the proxy's own
  refusals (400 404 408 413 414 417 431 501);
- the backend completed exactly as many requests as the client got backend
  answers: a request the proxy refused never reached it, and its own parser
  never choked on what the proxy forwarded;
- the proxy is still alive: a plain request afterwards gets 200.

Well-formed requests have a stronger property: each arrives at the backend
with the same method, target, headers and body, in order.

The corpus in tests/corpus/ keeps the interesting inputs (request smuggling
classics and parser edge cases); every file is replayed, and its name says
the statuses it must get: `cl-te.400.http`, `pipeline.200-200.http`,
`partial-head.408.http`, `pipelined-after-close.200.http`.

The proxy and backend run on a uvloop in a background thread for the whole
module (hypothesis drives a plain function); the client is a blocking socket.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

CORPUS = Path(__file__).parent.parent / "corpus"
DEADLINE = 5.0  # the longest any connection may stay open; nothing is asserted on time
PROXY_STATUSES = frozenset({400, 404, 408, 413, 414, 417, 431, 501})
LIMITS = ProxySettings(
    header_timeout=0.05,
    body_timeout=0.05,
    keepalive_timeout=0.02,
    read_timeout=2.0,
    connect_timeout=1.0,
    max_header_size=4096,
    max_uri_size=512,
    max_body_size=2048,
)
HOST = "fuzz.test"  # routed; other hosts get 404 (there is no catch-all)


# -- the backend ------------------------------------------------------------------


@dataclass
class Seen:
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class CountingBackend:
    """Parses with llhttp, answers every complete request, counts everything."""

    requests: list[Seen] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    port: int = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _BackendConnection(self), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]


class _BackendConnection(asyncio.Protocol):
    def __init__(self, backend: CountingBackend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.close()  # answered already; no tunnels here
        except httptools.HttpParserError as exc:
            self.backend.parse_errors.append(f"{exc!r} in {data[:200]!r}")
            self.transport.abort()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        self.backend.requests.append(Seen(method, self.url, self.headers, self.body))
        body = b"" if method == b"HEAD" else b"ok"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nX-Backend: fuzz\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )


# -- the proxy, live for the module ---------------------------------------------


class Live:
    def __init__(self) -> None:
        self.backend = CountingBackend()
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: uvloop.run(self._serve()), daemon=True)

    def __enter__(self) -> Live:
        self._thread.start()
        assert self._ready.wait(DEADLINE), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(DEADLINE)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.backend.start()
        target = TargetSpec(address=f"127.0.0.1:{self.backend.port}")
        spec = ServiceSpec(
            name="fuzz", host=HOST, health=None, passive=None, stable=PoolSpec(targets=(target,))
        )
        server = ProxyServer(LIMITS, RoutingTable(services=(spec,)))
        await server.start(["127.0.0.1:0"])
        self.port = server.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await server.stop(timeout=1.0)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with Live() as running:
        yield running


# -- the client ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def send(port: int, raw: bytes, *, half_close: bool = False, cuts: Sequence[int] = ()) -> bytes:
    """Send raw bytes, return everything until the proxy closes the connection.

    `cuts` split the bytes into writes a millisecond apart, so the proxy reads
    them separately (a head or a chunk size across reads).
    """
    edges = sorted({0, len(raw), *(cut % (len(raw) + 1) for cut in cuts)})
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for start, end in itertools.pairwise(edges):
                if start:
                    time.sleep(0.001)
                sock.sendall(raw[start:end])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy refused early and closed; what it said is still readable
        data = b""
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break  # a reset after our unread bytes; the answer came before it
            except TimeoutError:
                raise AssertionError(f"the proxy left the connection open: {raw[:300]!r}") from None
            if not piece:
                break
            data += piece
    return data


def answers(data: bytes) -> list[Answer]:
    """Split a byte stream into responses, strictly; interim 100s are dropped.

    The backend answers HEAD with Content-Length: 0 and HEAD is not fuzzed, so
    every body is framed by its own headers.
    """
    found: list[Answer] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"an incomplete head at {pos}: {data[pos : pos + 200]!r}"
        status_line, *lines = data[pos:end].decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*", status_line)
        assert match, f"not a status line: {status_line!r}"
        headers = []
        for line in lines:
            name, sep, value = line.partition(": ")
            assert sep, line
            assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name), line
            headers.append((name.lower(), value))
        pos = end + 4
        status = int(match[1])
        if status == 100:
            continue
        names = [n for n, _ in headers]
        assert names.count("content-length") == 1, f"responses here all carry a length: {headers}"
        assert "transfer-encoding" not in names
        length = int(dict(headers)["content-length"])
        body = data[pos : pos + length]
        assert len(body) == length, f"a truncated body: {data[pos - 300 :]!r}"
        pos += length
        found.append(Answer(status, headers, body))
    return found


def check(
    live: Live, raw: bytes, *, half_close: bool = False, cuts: Sequence[int] = ()
) -> list[int]:
    """Send one input and check every property; return the statuses it got."""
    before = len(live.backend.requests)
    data = send(live.port, raw, half_close=half_close, cuts=cuts)
    got = answers(data)
    from_backend = [a for a in got if ("x-backend", "fuzz") in a.headers]
    for answer in got:
        if answer in from_backend:
            assert answer.status == 200, answer
            assert answer.body in (b"ok", b""), answer
        else:
            assert answer.status in PROXY_STATUSES, (answer, raw[:300])
    assert live.backend.parse_errors == [], live.backend.parse_errors
    # Still alive, and a barrier: whatever the input made the proxy forward
    # has reached the backend before this request does.
    alive = answers(
        send(
            live.port, f"GET /alive HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
    )
    assert [(a.status, a.body) for a in alive] == [(200, b"ok")]
    forwarded = live.backend.requests[before:-1]
    assert len(forwarded) == len(from_backend), (raw[:300], [s.url for s in forwarded])
    return [a.status for a in got]


# -- generating requests ----------------------------------------------------------

METHODS = [
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"get",
    b"FOO",
    b"",
]
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/",
            b"/a/b?c=d",
            b"*",
            b"http://fuzz.test/abs",
            b"http://other.test/",
            b"fuzz.test:80",
            b"/%00",
            b"/a b",
            b"//x",
            b"/" + b"u" * 600,
            b"",
        ]
    ),
    st.binary(max_size=20).map(lambda b: b"/" + b),
)
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b"HTTP/1.x", b""]
HOSTS = st.sampled_from(
    [
        [HOST],
        [HOST],
        [HOST],
        [],
        [HOST, HOST],
        ["other.test"],
        [f"{HOST}:8080"],
        ["a b"],
        ["evil@fuzz.test"],
        [""],
    ]
)
FRAMINGS = [
    "none",
    "length",
    "length-wrong",
    "length-list",
    "chunked",
    "chunked-bad-size",
    "chunked-no-end",
    "both",
    "te-other",
    "te-obfuscated",
    "te-twice",
]
HEADER_NAMES = st.sampled_from(
    [
        b"X-A",
        b"Connection",
        b"Expect",
        b"Upgrade",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Transfer-Encoding ",
        b"Host",
        b"X-Forwarded-For",
        b"Te",
        b"Keep-Alive",
        b"X-Big",
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"close",
            b"keep-alive",
            b"chunked",
            b"100-continue",
            b"0",
            b"5",
            b"X-A",
            b"upgrade",
            b"h2c",
            b"\tchunked",
            b"chunked\x00",
            b"a" * 5000,
        ]
    ),
    st.binary(max_size=12),
)


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    method = draw(st.sampled_from(METHODS))
    line = b" ".join(x for x in (method, draw(TARGETS), draw(st.sampled_from(VERSIONS))))
    lines = [line] + [b"Host: " + h.encode() for h in draw(HOSTS)]
    lines += [
        n + b": " + v for n, v in draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3))
    ]
    body = draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(FRAMINGS))
    lines += _framing_lines(framing, len(body))
    return eol.join(lines) + eol + eol + _framed_body(framing, body)


def _framing_lines(framing: str, size: int) -> list[bytes]:
    return {
        "none": [],
        "length": [b"Content-Length: %d" % size],
        "length-wrong": [b"Content-Length: %d" % (size + 7)],
        "length-list": [b"Content-Length: %d, %d" % (size, size)],
        "chunked": [b"Transfer-Encoding: chunked"],
        "chunked-bad-size": [b"Transfer-Encoding: chunked"],
        "chunked-no-end": [b"Transfer-Encoding: chunked"],
        "both": [b"Content-Length: %d" % size, b"Transfer-Encoding: chunked"],
        "te-other": [b"Transfer-Encoding: gzip"],
        "te-obfuscated": [b"Transfer-Encoding : chunked"],
        "te-twice": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
    }[framing]


def _framed_body(framing: str, body: bytes) -> bytes:
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:100], body[100:]) if p)
    if framing in ("chunked", "both", "te-obfuscated", "te-twice"):
        return chunked + b"0\r\n\r\n"
    if framing == "chunked-bad-size":
        return b"zz" + chunked + b"0\r\n\r\n"
    if framing == "chunked-no-end":
        return chunked
    return body


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """1 to 3 pipelined requests, then up to 3 random splices of bytes."""
    raw = bytearray(b"".join(draw(st.lists(one_request(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.integers(0, 4))
        raw[at : at + cut] = draw(st.binary(max_size=6))
    return bytes(raw)


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet="".join(map(chr, range(0x21, 0x7F))) + " ", max_size=30).map(str.strip)
RESERVED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
}


@dataclass
class Valid:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes


@st.composite
def valid_request(draw: st.DrawFn) -> Valid:
    method = draw(
        st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"])
    )
    segments = draw(st.lists(st.text(alphabet="abcxyz019-._~%", max_size=8), max_size=4))
    target = ("/" + "/".join(segments)).encode()
    if draw(st.booleans()):
        target += b"?" + draw(st.text(alphabet="abc=&019", max_size=20)).encode()
    names = draw(st.lists(TOKEN.filter(lambda n: n not in RESERVED), max_size=4, unique=True))
    headers = [(("X-" + n).encode(), draw(VALUE).encode()) for n in names]
    body = b"" if method in (b"GET", b"HEAD", b"OPTIONS") else draw(st.binary(max_size=1500))
    head = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST.encode()]
    head += [n + b": " + v for n, v in headers]
    if body and draw(st.booleans()):
        cut = draw(st.integers(1, len(body)))
        head.append(b"Transfer-Encoding: chunked")
        wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:cut], body[cut:]) if p)
        wire += b"0\r\n\r\n"
    else:
        head.append(b"Content-Length: %d" % len(body))
        wire = body
    return Valid(method, target, headers, body, b"\r\n".join(head) + b"\r\n\r\n" + wire)


# -- properties -----------------------------------------------------------------------

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


CUTS = st.lists(st.integers(0, 1 << 16), max_size=3)


@FUZZ
@given(raw=mangled(), half_close=st.booleans(), cuts=CUTS)
def test_mangled_requests_get_well_formed_answers_and_never_reach_the_app(
    live: Live, raw: bytes, half_close: bool, cuts: list[int]
) -> None:
    check(live, raw, half_close=half_close, cuts=cuts)


@settings(FUZZ, max_examples=100)
@given(requests=st.lists(valid_request(), min_size=1, max_size=3), cuts=CUTS)
def test_valid_requests_reach_the_app_exactly_as_sent(
    live: Live, requests: list[Valid], cuts: list[int]
) -> None:
    before = len(live.backend.requests)
    raw = b"".join(r.raw for r in requests)
    data = send(live.port, raw, half_close=True, cuts=cuts)
    got = answers(data)
    assert [(a.status, ("x-backend", "fuzz") in a.headers) for a in got] == [(200, True)] * len(
        requests
    )
    seen = live.backend.requests[before:]
    assert len(seen) == len(requests)
    for sent, arrived in zip(requests, seen, strict=True):
        assert (arrived.method, arrived.url, arrived.body) == (sent.method, sent.target, sent.body)
        custom = [(n, v) for n, v in arrived.headers if n.lower().startswith(b"x-")]
        custom = [
            h for h in custom if not h[0].lower().startswith((b"x-forwarded-", b"x-request-id"))
        ]
        assert custom == sent.headers


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.http"))


def expected_statuses(path: Path) -> list[int]:
    """`name.400.http` -> [400]; `name.200-400.http` -> [200, 400]; `name.none.http` -> []."""
    label = path.name.removesuffix(".http").rsplit(".", 1)[1]
    return [] if label == "none" else [int(s) for s in label.split("-")]


def test_the_corpus_is_there() -> None:
    files = corpus_files()
    assert len(files) >= 30
    assert all(
        re.fullmatch(r"[a-z0-9-]+\.(none|[0-9]{3}(-[0-9]{3})*)\.http", f.name) for f in files
    )


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_replay(live: Live, path: Path) -> None:
    assert check(live, path.read_bytes()) == expected_statuses(path)
