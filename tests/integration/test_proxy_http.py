"""The embedded proxy on real sockets: correct HTTP/1.1 proxying, the upstream
keep-alive pool and its race, and bad input that must never reach an app.

Ports the ideas of nginx-tests proxy_keepalive.t, proxy_non_idempotent.t and
proxy_next_upstream.t, and of HAProxy's http_reuse_safe.vtc, as exact byte
exchanges against tiny backends on port 0. Assertions count requests,
connections and bytes; none measures time. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from harness import (
    DEADLINE,
    Action,
    Backend,
    ClosingBackend,
    KeepAliveClient,
    RawBackend,
    Request,
    Response,
    backends,
    exchange,
    ok,
    port_of,
    proxy,
    read_response,
    request,
    run,
    service,
    until,
)
from zerodown.demo.process import AppProcess, spawn_app
from zerodown.proxy import http
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.upstream import ConnectionPool

FAST = ProxySettings(
    header_timeout=2.0,
    body_timeout=2.0,
    keepalive_timeout=2.0,
    connect_timeout=0.5,
    read_timeout=2.0,
    queue_timeout=0.5,
)
HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
)


# -- helpers -------------------------------------------------------------------


def split_responses(data: bytes, head: frozenset[int] = frozenset()) -> list[Response]:
    """Every response in a byte stream, in order, framed by RFC 9112 §6.3.

    `head` holds the indexes (among final responses) of answers to HEAD
    requests: they have no body whatever their Content-Length says. Interim
    (1xx) responses are returned too but not counted in those indexes. Fails
    on any byte that is not part of a well-formed response.
    """
    responses: list[Response] = []
    pos, final = 0, 0
    while pos < len(data):
        end = data.index(b"\r\n\r\n", pos) + 4
        status_line, *lines = data[pos : end - 4].decode("latin-1").split("\r\n")
        version, code, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = [(k, v) for k, v in (line.split(": ", 1) for line in lines)]
        response = Response(int(code), headers, raw=data[pos:end])
        responses.append(response)
        pos = end
        if 100 <= response.status < 200:
            continue
        length = response.header("content-length")
        if final in head or response.status in (204, 304):
            pass
        elif length is not None:
            response.body = data[pos : pos + int(length)]
            assert len(response.body) == int(length), "truncated body"
            pos += int(length)
        elif (response.header("transfer-encoding") or "").split(",")[-1].strip() == "chunked":
            response.body, pos = _dechunk(data, pos)
        else:
            response.body, pos = data[pos:], len(data)
        final += 1
    return responses


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol], 16)
        pos = eol + 2
        if size == 0:
            assert data[pos : pos + 2] == b"\r\n", "trailers or garbage after the last chunk"
            return bytes(body), pos + 2
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2


def raw_request(
    method: str = "GET",
    path: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "example.test",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def handler_of(
    answer: Callable[[Request], bytes | Action],
) -> Callable[[Request], Awaitable[bytes | Action]]:
    async def handle(req: Request) -> bytes | Action:
        return answer(req)

    return handle


def counting(answers: dict[int, Action]) -> Callable[[Request], Awaitable[bytes | Action]]:
    """A handler that misbehaves on the n-th request it sees (1-based), else answers its path."""
    seen = 0

    async def handle(req: Request) -> bytes | Action:
        nonlocal seen
        seen += 1
        return answers.get(seen) or ok(req.path.encode())

    return handle


def pool_of(server: ProxyServer, name: str = "web") -> ConnectionPool:
    pool = server.services[name].stable.targets[0].connections
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def one_backend(**kwargs: object) -> AsyncIterator[Backend]:
    async with backends("b", **kwargs) as (backend,):
        yield backend


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. correct proxying: bodies ------------------------------------------------


def test_content_length_request_body_is_forwarded_byte_for_byte() -> None:
    body = bytes(range(256)) * 300 + b"\r\n\r\n0\r\n\r\n"

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            response = await request(port_of(srv), "POST", "/upload", body=body)
        assert response.status == 200
        [seen] = backend.requests
        assert (seen.method, seen.path, seen.body) == ("POST", "/upload", body)
        assert seen.all("content-length") == [str(len(body))]
        assert seen.header("transfer-encoding") is None

    run(main())


def test_chunked_request_body_arrives_chunked_and_decodes_to_the_same_bytes() -> None:
    pieces = [b"hello", b"", b"x" * 70_000, bytes(range(256)), b"\r\n0\r\n"]
    wire = (
        b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
        + b"0\r\nX-Trailer: t\r\n\r\n"
    )

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            head = raw_request(
                "PUT", "/c", [("Transfer-Encoding", "chunked"), ("Connection", "close")]
            )
            [response] = split_responses(await exchange(port_of(srv), head + wire))
        assert response.status == 200
        [seen] = backend.requests
        assert seen.body == b"".join(pieces)
        assert seen.all("transfer-encoding") == ["chunked"]
        assert seen.header("content-length") is None

    run(main())


CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (ok(b"hello world"), b"hello world"),
        (CHUNKED_RESPONSE, b"hello world"),
        (Action(partial=b"HTTP/1.1 200 X\r\nX-Close: 1\r\n\r\nhello world"), b"hello world"),
        (
            Action(partial=b"HTTP/1.0 200 X\r\n\r\n" + bytes(range(256)) * 64),
            bytes(range(256)) * 64,
        ),
    ],
    ids=["content-length", "chunked", "close-delimited", "http10-close-delimited"],
)
def test_response_bodies_are_delivered_intact_in_every_framing(
    answer: bytes | Action, body: bytes
) -> None:
    async def main() -> None:
        handler = handler_of(lambda req: answer)
        async with (
            one_backend(handler=handler) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            first = await client.request("GET", "/1")
            second = await client.request("GET", "/2")  # the client connection survived
        for response in (first, second):
            assert (response.status, response.body) == (200, body)
            # A body with no length is re-framed for an HTTP/1.1 client, never close-delimited.
            assert response.header("content-length") or response.header("transfer-encoding")
        assert [r.path for r in backend.requests] == ["/1", "/2"]

    run(main())


def test_head_response_has_no_body_and_the_connection_stays_usable() -> None:
    def answer(req: Request) -> bytes:
        if req.method == "HEAD":
            return b"HTTP/1.1 200 X\r\nContent-Length: 1234\r\nX-Head: yes\r\n\r\n"
        return ok(b"after-head")

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            raw = raw_request("HEAD", "/h") + raw_request("GET", "/g", [("Connection", "close")])
            data = await exchange(port_of(srv), raw)
        head, get = split_responses(data, head=frozenset({0}))
        assert (head.status, head.header("content-length"), head.header("x-head")) == (
            200,
            "1234",
            "yes",
        )
        # The HEAD response ends at its blank line: the next bytes are the next status line.
        assert data.startswith(head.raw)
        assert data[len(head.raw) :].startswith(b"HTTP/1.1 200 ")
        assert (get.status, get.body) == (200, b"after-head")
        assert [(r.method, r.path) for r in backend.requests] == [("HEAD", "/h"), ("GET", "/g")]
        assert backend.connections == 1  # the upstream connection was reused after HEAD

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 50\r\n\r\n',
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n',
    ],
    ids=["204", "304-with-length", "304"],
)
def test_204_and_304_have_no_body(answer: bytes) -> None:
    def handle(req: Request) -> bytes:
        return answer if req.path == "/empty" else ok(b"next")

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(handle)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            raw = raw_request("GET", "/empty") + raw_request("GET", "/n", [("Connection", "close")])
            data = await exchange(port_of(srv), raw)
        empty, after = split_responses(data)
        assert empty.status == int(answer[9:12])
        assert empty.header("transfer-encoding") is None
        assert data[len(empty.raw) :].startswith(b"HTTP/1.1 200 ")
        assert (after.status, after.body) == (200, b"next")
        assert backend.connections == 1

    run(main())


def test_expect_100_continue_is_answered_by_the_proxy_and_not_forwarded() -> None:
    body = b"x" * 1000

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            headers = [("Expect", "100-continue"), ("Content-Length", str(len(body)))]
            writer.write(raw_request("POST", "/e", headers))
            async with asyncio.timeout(DEADLINE):
                interim = await reader.readexactly(len(b"HTTP/1.1 100 Continue\r\n\r\n"))
            writer.write(body)
            final = await read_response(reader)
            writer.close()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert final.status == 200
        [seen] = backend.requests
        assert seen.body == body
        assert seen.header("expect") is None

    run(main())


def test_an_http10_client_never_gets_100_continue_and_its_expectations_are_ignored() -> None:
    # RFC 9110 §10.1.1 and §15.2: an HTTP/1.0 expectation is ignored, and an
    # HTTP/1.0 client is never sent a 1xx.
    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"POST /1 HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            await until(lambda: backend.connections == 1, "the proxy went upstream")
            writer.write(b"abc")
            async with asyncio.timeout(DEADLINE):
                first = await reader.read(-1)
            writer.close()
            odd = b"POST /2 HTTP/1.0\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\nabc"
            second = await exchange(port_of(srv), odd)
        assert [r.status for r in split_responses(first)] == [200]
        assert [r.status for r in split_responses(second)] == [200]
        assert [(r.path, r.body, r.header("expect")) for r in backend.requests] == [
            ("/1", b"abc", None),
            ("/2", b"abc", None),
        ]

    run(main())


def test_pipelined_requests_are_answered_in_order() -> None:
    async def slow_first(req: Request) -> bytes:
        if req.path == "/1":
            await asyncio.sleep(0.02)  # so an out-of-order answer would overtake it
        return ok(req.path.encode())

    async def main() -> None:
        async with (
            one_backend(handler=slow_first) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            raw = (
                raw_request("GET", "/1")
                + raw_request("POST", "/2", [("Content-Length", "3")], b"abc")
                + raw_request("GET", "/3", [("Connection", "close")])
            )
            data = await exchange(port_of(srv), raw)
        responses = split_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"/1"), (200, b"/2"), (200, b"/3")]
        assert [r.path for r in backend.requests] == ["/1", "/2", "/3"]
        assert backend.requests[1].body == b"abc"
        assert responses[-1].header("connection") == "close"
        assert backend.connections == 1

    run(main())


def test_a_client_that_half_closes_gets_every_pipelined_answer() -> None:
    # The client sent three whole requests, then shut its write side: each of
    # them is answered, in order, and only the last response announces the close.
    async def main() -> None:
        async with (
            one_backend(handler=counting({})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(
                raw_request("GET", "/1") + raw_request("GET", "/2") + raw_request("GET", "/3")
            )
            writer.write_eof()
            async with asyncio.timeout(DEADLINE):
                data = await reader.read(-1)
            writer.close()
        responses = split_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"/1"), (200, b"/2"), (200, b"/3")]
        assert [r.header("connection") for r in responses] == [None, None, "close"]
        assert [r.path for r in backend.requests] == ["/1", "/2", "/3"]

    run(main())


def test_a_bad_request_pipelined_after_good_ones_is_answered_in_its_turn() -> None:
    raw = (
        raw_request("GET", "/1")
        + raw_request("GET", "/2")
        + b"GET /3 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    )

    async def main() -> None:
        async with (
            one_backend(handler=counting({})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            data = await exchange(port_of(srv), raw)
        responses = split_responses(data)
        assert [(r.status, r.header("connection")) for r in responses] == [
            (200, None),
            (200, None),
            (400, "close"),
        ]
        assert [r.path for r in backend.requests] == ["/1", "/2"]

    run(main())


def test_one_client_connection_carries_several_requests() -> None:
    async def main() -> None:
        async with (
            one_backend(handler=counting({})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            responses = [await client.request("GET", f"/{i}") for i in range(5)]
        assert [(r.status, r.body) for r in responses] == [
            (200, f"/{i}".encode()) for i in range(5)
        ]
        assert all(r.header("connection") is None for r in responses)
        assert [r.path for r in backend.requests] == [f"/{i}" for i in range(5)]

    run(main())


def test_http10_client_without_keep_alive_gets_the_body_then_a_close() -> None:
    async def main() -> None:
        async with (
            one_backend(handler=handler_of(lambda req: CHUNKED_RESPONSE)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            data = await exchange(port_of(srv), b"GET /old HTTP/1.0\r\n\r\n")
        [response] = split_responses(data)
        # No chunked coding for an HTTP/1.0 client: the body ends with the close.
        assert response.header("transfer-encoding") is None
        assert (response.status, response.body) == (200, b"hello world")
        assert response.header("connection") == "close"
        assert [r.path for r in backend.requests] == ["/old"]

    run(main())


def test_http10_client_with_keep_alive_stays_open() -> None:
    async def main() -> None:
        async with (
            one_backend(handler=counting({})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            responses = []
            for path in ("/a", "/b"):
                writer.write(f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
                responses.append(await read_response(reader))
            writer.close()
        assert [(r.status, r.body) for r in responses] == [(200, b"/a"), (200, b"/b")]
        assert [r.header("connection") for r in responses] == ["keep-alive", "keep-alive"]
        assert [r.path for r in backend.requests] == ["/a", "/b"]

    run(main())


# -- 1. correct proxying: what backends send --------------------------------------


def test_response_with_a_transfer_coding_before_chunked_is_complete_and_keeps_its_coding() -> None:
    # RFC 9112 §6.3 item 7: with a coding other than chunked last, the body
    # runs to the close; the coding is the client's to undo, so it must stay named.
    payload = bytes(range(256)) * 8

    async def main() -> None:
        answer = Action(partial=b"HTTP/1.1 200 X\r\nTransfer-Encoding: gzip\r\n\r\n" + payload)
        async with (
            one_backend(handler=handler_of(lambda req: answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            data = await exchange(port_of(srv), raw_request(headers=[("Connection", "close")]))
        [response] = split_responses(data)  # fails on a body cut short
        assert (response.status, response.body) == (200, payload)
        assert response.header("transfer-encoding") == "gzip, chunked"

    run(main())


def test_interim_responses_from_the_backend_are_not_forwarded() -> None:
    answer = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    )

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(lambda req: answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            raw = raw_request("GET", "/1") + raw_request("GET", "/2", [("Connection", "close")])
            data = await exchange(port_of(srv), raw)
        responses = split_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"final"), (200, b"final")]
        assert backend.connections == 1

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 X\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 X\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 X\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    ],
    ids=["garbage", "bad-status", "cl-and-te", "two-lengths"],
)
def test_a_malformed_backend_response_is_502_and_its_connection_is_dropped(answer: bytes) -> None:
    async def main() -> None:
        async with (
            one_backend(handler=handler_of(lambda req: answer)) as backend,
            proxy(service(backend.address, passive=None), settings=FAST) as srv,
        ):
            responses = [await request(port_of(srv), path=f"/{i}") for i in range(2)]
        assert [r.status for r in responses] == [502, 502]
        assert [r.path for r in backend.requests] == ["/0", "/1"]
        assert backend.connections == 2

    run(main())


def test_a_backend_body_that_breaks_framing_cuts_the_client_connection() -> None:
    # The head was already forwarded: the only honest end is to cut the client,
    # never to leave the connection open for the next (pipelined) response.
    answer = b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngood\r\nzz\r\n"

    async def handle(req: Request) -> bytes:
        return answer if req.path == "/bad" else ok(b"next")

    async def main() -> None:
        async with (
            one_backend(handler=handle) as backend,
            proxy(service(backend.address, passive=None), settings=FAST) as srv,
        ):
            data = await exchange(
                port_of(srv), raw_request("GET", "/bad") + raw_request("GET", "/next")
            )
        assert data.startswith(b"HTTP/1.1 200 ")
        assert data.count(b"HTTP/1.1 ") == 1, data
        assert not data.endswith(b"0\r\n\r\n")
        assert [r.path for r in backend.requests] == ["/bad"]

    run(main())


# -- 1. correct proxying: targets, HEAD errors, HTTP/1.0 framing -------------------


def test_absolute_form_target_replaces_the_host_header() -> None:
    # RFC 9112 §3.2.2: the proxy routed by the target's authority, so the app
    # must see that authority as Host, never the client's other Host value.
    raw = (
        b"GET http://app.test:8080/x?y=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"
    )

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(service(backend.address, host="app.test"), settings=FAST) as srv,
        ):
            [response] = split_responses(await exchange(port_of(srv), raw))
        assert response.status == 200
        [seen] = backend.requests
        assert seen.path == "/x?y=1"
        assert seen.all("host") == ["app.test:8080"]
        assert seen.all("x-forwarded-host") == ["app.test:8080"]

    run(main())


@pytest.mark.parametrize(("host", "status"), [("nowhere.test", 404), ("dead.test", 502)])
def test_the_proxys_own_answer_to_head_has_no_body(host: str, status: int) -> None:
    # Our 404/502 keeps the connection: a body after a HEAD answer would be
    # read by the client as the start of its next response.
    async def main() -> None:
        async with one_backend() as backend:
            dead = service(
                f"127.0.0.1:{closed_port()}", name="dead", host="dead.test", passive=None
            )
            live = service(backend.address, host="app.test")
            async with proxy(dead, live, settings=FAST) as srv:
                raw = raw_request("HEAD", "/", host=host) + raw_request(
                    "GET", "/next", [("Connection", "close")], host="app.test"
                )
                data = await exchange(port_of(srv), raw)
        first, second = split_responses(data, head=frozenset({0}))
        assert first.status == status
        assert data[len(first.raw) :].startswith(b"HTTP/1.1 200 ")
        assert (second.status, second.body) == (200, b"b")
        assert [r.path for r in backend.requests] == ["/next"]

    run(main())


def test_http10_request_with_transfer_encoding_closes_after_its_answer() -> None:
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing: answer,
    # then close, even when the client asked to keep the connection.
    raw = (
        b"POST /1 HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n" + raw_request("GET", "/2")
    )

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            data = await exchange(port_of(srv), raw)
        [response] = split_responses(data)
        assert (response.status, response.header("connection")) == (200, "close")
        assert [(r.path, r.body) for r in backend.requests] == [("/1", b"abc")]

    run(main())


# -- 1. correct proxying: headers -----------------------------------------------


def test_hop_by_hop_request_headers_are_removed_including_those_named_in_connection() -> None:
    headers = [
        ("Connection", "keep-alive, X-Secret, x-other-secret"),
        ("X-Secret", "s1"),
        ("X-Other-Secret", "s2"),
        ("Keep-Alive", "timeout=300"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("X-Kept", "k"),
    ]

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(service(backend.address), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            response = await client.request("GET", "/", headers=dict(headers))
        assert response.status == 200
        [seen] = backend.requests
        names = {k.lower() for k, _ in seen.headers}
        assert names.isdisjoint({*HOP_BY_HOP, "x-secret", "x-other-secret"}), names
        assert seen.all("x-kept") == ["k"]

    run(main())


def test_hop_by_hop_response_headers_are_removed_including_those_named_in_connection() -> None:
    answer = (
        b"HTTP/1.1 200 X\r\nConnection: X-Internal, Keep-Alive\r\nX-Internal: secret\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
        b"Proxy-Connection: keep-alive\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok"
    )

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(lambda req: answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            response = await request(port_of(srv))
        assert (response.status, response.body) == (200, b"ok")
        names = [k.lower() for k, _ in response.headers]
        leaked = set(names) & {*HOP_BY_HOP, "x-internal"} - {"connection"}
        assert not leaked, leaked
        assert response.all("connection") == ["close"]  # ours, for the client's Connection: close
        assert response.all("x-kept") == ["k"]
        assert response.all("content-length") == ["2"]
        assert backend.connections == 1

    run(main())


def test_host_is_preserved() -> None:
    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            await request(port_of(srv), host="Shop.Example.Test:8080")
        assert backend.requests[0].all("host") == ["Shop.Example.Test:8080"]

    run(main())


SPOOFED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.test",
}


def test_forwarded_headers_are_set_and_spoofed_ones_replaced_for_an_untrusted_client() -> None:
    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            await request(port_of(srv), headers=SPOOFED)
            await request(port_of(srv))
        for seen in backend.requests:
            assert seen.all("x-forwarded-for") == ["127.0.0.1"]
            assert seen.all("x-forwarded-proto") == ["http"]
            assert seen.all("x-forwarded-host") == ["example.test"]

    run(main())


def test_underscore_spellings_cannot_spoof_the_forwarded_headers() -> None:
    # nginx's underscores_in_headers: a WSGI app reads X-Forwarded_For and
    # X-Forwarded-For from one environ key, HTTP_X_FORWARDED_FOR.
    spoofs = {
        "X-Forwarded_For": "6.6.6.6",
        "X_Forwarded_Proto": "https",
        "X-Forwarded_Host": "evil.test",
        "X-Request_ID": "evil-id",
    }

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            response = await request(port_of(srv), headers=spoofs)
        assert response.status == 200
        [seen] = backend.requests
        environ: dict[str, str] = {}
        for name, value in seen.headers:  # what a WSGI server would build
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        assert environ["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
        assert environ["HTTP_X_FORWARDED_PROTO"] == "http"
        assert environ["HTTP_X_FORWARDED_HOST"] == "example.test"
        assert environ["HTTP_X_REQUEST_ID"] == response.header("x-request-id")

    run(main())


def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_extended() -> None:
    trusted = ProxySettings(trusted_proxies=("127.0.0.0/8",), read_timeout=2.0)

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(service(backend.address), settings=trusted) as srv,
        ):
            await request(port_of(srv), headers=SPOOFED)
            raw = raw_request(
                headers=[
                    ("X-Forwarded-For", "1.1.1.1"),
                    ("X-Forwarded-For", "2.2.2.2"),
                    ("Connection", "close"),
                ]
            )
            await exchange(port_of(srv), raw)
            await request(port_of(srv))
        kept, joined, fresh = backend.requests
        assert kept.all("x-forwarded-for") == ["6.6.6.6, 127.0.0.1"]
        assert kept.all("x-forwarded-proto") == ["https"]
        assert kept.all("x-forwarded-host") == ["evil.test"]
        assert joined.all("x-forwarded-for") == ["1.1.1.1, 2.2.2.2, 127.0.0.1"]
        assert fresh.all("x-forwarded-for") == ["127.0.0.1"]
        assert fresh.all("x-forwarded-proto") == ["http"]
        assert fresh.all("x-forwarded-host") == ["example.test"]

    run(main())


def test_request_id_is_generated_when_absent_and_the_same_on_both_sides() -> None:
    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            responses = [await request(port_of(srv)) for _ in range(3)]
        sent = [r.all("x-request-id") for r in backend.requests]
        got = [r.all("x-request-id") for r in responses]
        assert all(len(ids) == 1 and ids[0] for ids in sent), sent
        assert got == sent
        assert len({ids[0] for ids in sent}) == 3

    run(main())


def test_request_id_is_kept_when_present_and_a_backend_one_does_not_duplicate_it() -> None:
    answer = ok(b"ok", headers={"X-Request-ID": "from-backend"})

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(lambda req: answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            response = await request(port_of(srv), headers={"X-Request-ID": "client-abc-123"})
        assert backend.requests[0].all("x-request-id") == ["client-abc-123"]
        assert response.all("x-request-id") == ["client-abc-123"]

    run(main())


# -- 1. large bodies both ways, through the demo app ------------------------------

BIG = 50 * 1024 * 1024
_PATTERN = bytes(range(256)) * 260  # any read of <= 64 KiB at any offset fits


@pytest.fixture(scope="module")
def demo() -> Iterator[AppProcess]:
    app = spawn_app("v-big")
    yield app
    app.stop()


async def _read_head(reader: asyncio.StreamReader) -> Response:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
    return Response(
        int(status_line.split(" ")[1]), [(k, v) for k, v in (x.split(": ", 1) for x in lines)]
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_50_mb_upload_is_echoed_back_intact(demo: AppProcess, chunked: bool) -> None:
    block = os.urandom(1 << 20)
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(BIG))

    async def main() -> tuple[Response, int, str, str]:
        async with proxy(service(demo.address), settings=FAST) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            head = raw_request("POST", "/echo", [framing, ("Content-Type", "app/x-big")])
            sent = hashlib.sha256()

            async def upload() -> None:
                writer.write(head)
                for i in range(BIG // len(block)):
                    piece = struct.pack(">I", i) + block[4:]  # every MiB differs
                    sent.update(piece)
                    writer.writelines(http.chunk(piece) if chunked else [piece])
                    await writer.drain()
                if chunked:
                    writer.write(http.LAST_CHUNK)

            async def download() -> tuple[Response, int, str]:
                response = await _read_head(reader)
                got, total = hashlib.sha256(), 0
                async for piece in _body_pieces(reader, response):
                    got.update(piece)
                    total += len(piece)
                return response, total, got.hexdigest()

            async with asyncio.timeout(DEADLINE * 2):
                _, (response, total, digest) = await asyncio.gather(upload(), download())
            writer.close()
            return response, total, digest, sent.hexdigest()

    response, total, digest, expected = run(main())
    assert response.status == 200
    # The echo copies a Content-Length; a chunked upload comes back chunked.
    assert response.header("content-length") == (None if chunked else str(BIG))
    assert response.header("transfer-encoding") == ("chunked" if chunked else None)
    assert response.header("x-version") == "v-big"
    assert response.header("x-request-id")  # it came through the proxy
    assert (total, digest) == (BIG, expected)


async def _body_pieces(reader: asyncio.StreamReader, response: Response) -> AsyncIterator[bytes]:
    """A response body as it arrives, by Content-Length or chunked."""
    length = response.header("content-length")
    if length is not None:
        left = int(length)
        while left:
            piece = await reader.read(min(left, 1 << 20))
            assert piece, "connection closed mid-body"
            left -= len(piece)
            yield piece
        return
    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
        yield await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"
    assert await reader.readexactly(2) == b"\r\n"


def test_50_mb_download_is_delivered_intact(demo: AppProcess) -> None:
    async def main() -> tuple[Response, int, int]:
        async with proxy(service(demo.address), settings=FAST) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(raw_request("GET", f"/bytes?n={BIG}", [("Connection", "close")]))
            async with asyncio.timeout(DEADLINE * 2):
                response = await _read_head(reader)
                total, wrong = 0, 0
                while piece := await reader.read(65536):
                    start = total % 256
                    wrong += piece != _PATTERN[start : start + len(piece)]
                    total += len(piece)
            writer.close()
            return response, total, wrong

    response, total, wrong = run(main())
    assert response.status == 200
    assert response.header("x-request-id")  # it came through the proxy
    assert response.header("content-length") == str(BIG)
    assert (total, wrong) == (BIG, 0)


# -- 2. the upstream keep-alive pool ---------------------------------------------


def test_sequential_requests_share_one_upstream_connection() -> None:
    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            async with KeepAliveClient(port_of(srv)) as client:
                statuses = [(await client.request("GET", f"/{i}")).status for i in range(10)]
            statuses += [(await request(port_of(srv), path="/c")).status for _ in range(5)]
        assert statuses == [200] * 15
        assert len(backend.requests) == 15
        assert backend.connections == 1

    run(main())


REUSABLE: dict[str, tuple[bytes | Action, bytes]] = {
    "content-length": (ok(b"body"), b"body"),
    "chunked": (CHUNKED_RESPONSE, b"hello world"),
    "204": (b"HTTP/1.1 204 X\r\n\r\n", b""),
    "304": (b"HTTP/1.1 304 X\r\nContent-Length: 9\r\n\r\n", b""),
}
NOT_REUSABLE: dict[str, tuple[bytes | Action, bytes]] = {
    "connection-close": (ok(b"body", headers={"Connection": "close"}), b"body"),
    "http10-no-keep-alive": (b"HTTP/1.0 200 X\r\nContent-Length: 4\r\n\r\nbody", b"body"),
    "close-delimited": (Action(partial=b"HTTP/1.1 200 X\r\n\r\nbody"), b"body"),
}


@pytest.mark.parametrize(
    ("kind", "connections"),
    [*((k, 1) for k in REUSABLE), *((k, 3) for k in NOT_REUSABLE)],
)
def test_upstream_connection_is_reused_exactly_when_the_response_allows(
    kind: str, connections: int
) -> None:
    answer, body = {**REUSABLE, **NOT_REUSABLE}[kind]

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(lambda req: answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            responses = [await client.request("GET", f"/{i}") for i in range(3)]
        status = int(answer.partial[9:12] if isinstance(answer, Action) else answer[9:12])
        assert [(r.status, r.body) for r in responses] == [(status, body)] * 3
        assert len(backend.requests) == 3
        assert backend.connections == connections

    run(main())


def test_head_response_leaves_the_upstream_connection_reusable() -> None:
    def answer(req: Request) -> bytes:
        return b"HTTP/1.1 200 X\r\nContent-Length: 5000\r\n\r\n" if req.method == "HEAD" else ok()

    async def main() -> None:
        async with (
            one_backend(handler=handler_of(answer)) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            responses = [await client.request(m) for m in ("HEAD", "HEAD", "GET")]
        assert [(r.status, r.body) for r in responses] == [(200, b""), (200, b""), (200, b"ok")]
        assert [r.header("content-length") for r in responses] == ["5000", "5000", "2"]
        assert backend.connections == 1

    run(main())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_backend_closing_after_every_response_never_reaches_the_client(method: str) -> None:
    async def main() -> None:
        async with (
            one_backend(close_after=1, handler=counting({})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            pool = pool_of(srv)
            async with KeepAliveClient(port_of(srv)) as client:
                responses = []
                for i in range(5):
                    responses.append(await client.request(method, f"/{i}", body=b"b%d" % i))
                    # The close is seen before the next request is written.
                    await until(lambda: not pool.idle, "the pool noticed the close")
        assert [(r.status, r.body) for r in responses] == [
            (200, f"/{i}".encode()) for i in range(5)
        ]
        assert [(r.method, r.path, r.body) for r in backend.requests] == [
            (method, f"/{i}", b"b%d" % i) for i in range(5)
        ]
        assert backend.connections == 5

    run(main())


@pytest.mark.parametrize(
    "misbehaviour", [Action(reset=True), Action(close=True)], ids=["reset", "close"]
)
def test_keepalive_race_on_a_reused_connection_retries_an_idempotent_request(
    misbehaviour: Action,
) -> None:
    # http_reuse_safe.vtc: the app drops the kept-alive connection as the proxy
    # reuses it. The GET was written; it is safe to repeat on a fresh connection.
    async def main() -> None:
        async with (
            one_backend(handler=counting({2: misbehaviour})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            first = await client.request("GET", "/1")
            second = await client.request("GET", "/2")
            third = await client.request("GET", "/3")
        assert [(r.status, r.body) for r in (first, second, third)] == [
            (200, b"/1"),
            (200, b"/2"),
            (200, b"/3"),
        ]
        assert [r.path for r in backend.requests] == ["/1", "/2", "/2", "/3"]
        assert backend.connections == 2

    run(main())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_keepalive_race_replays_a_put_body_on_the_fresh_connection(chunked: bool) -> None:
    body = bytes(range(256)) * 100  # under the replay limit

    async def main() -> None:
        async with (
            one_backend(handler=counting({2: Action(reset=True)})) as backend,
            proxy(service(backend.address), settings=FAST) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(raw_request("GET", "/1"))
            first = await read_response(reader)
            if chunked:
                wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:999], body[999:]))
                writer.write(raw_request("PUT", "/2", [("Transfer-Encoding", "chunked")]))
                writer.write(wire + b"0\r\n\r\n")
            else:
                writer.write(raw_request("PUT", "/2", [("Content-Length", str(len(body)))], body))
            second = await read_response(reader)
            writer.close()
        assert [(r.status, r.body) for r in (first, second)] == [(200, b"/1"), (200, b"/2")]
        assert [(r.method, r.path, r.body) for r in backend.requests] == [
            ("GET", "/1", b""),
            ("PUT", "/2", body),  # read in full, then the connection was reset
            ("PUT", "/2", body),  # the replay, byte for byte
        ]
        assert backend.connections == 2

    run(main())


def test_keepalive_race_does_not_retry_a_put_too_big_to_replay() -> None:
    body = b"x" * (256 * 1024)  # more than the proxy keeps for a replay

    async def main() -> None:
        async with (
            one_backend(handler=counting({2: Action(reset=True)})) as backend,
            proxy(service(backend.address, passive=None), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            first = await client.request("GET", "/1")
            second = await client.request("PUT", "/2", body=body)
        assert (first.status, second.status) == (200, 502)
        assert [(r.method, len(r.body)) for r in backend.requests] == [
            ("GET", 0),
            ("PUT", len(body)),
        ]

    run(main())


@pytest.mark.parametrize(
    "misbehaviour", [Action(reset=True), Action(close=True)], ids=["reset", "close"]
)
def test_post_written_on_a_reused_connection_is_never_retried(misbehaviour: Action) -> None:
    async def main() -> None:
        async with (
            one_backend(handler=counting({2: misbehaviour})) as backend,
            proxy(service(backend.address, passive=None), settings=FAST) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            warm = await client.request("GET", "/warm")
            post = await client.request("POST", "/pay", body=b"once")
            after = await client.request("GET", "/after")
        assert (warm.status, post.status, after.status) == (200, 502, 200)
        assert post.header("x-request-id")
        assert [(r.method, r.path) for r in backend.requests] == [
            ("GET", "/warm"),
            ("POST", "/pay"),
            ("GET", "/after"),
        ]

    run(main())


def test_post_is_not_retried_on_another_target_once_sent() -> None:
    # proxy_non_idempotent.t: an error after the request went out ends a POST.
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            a.handler = handler_of(lambda req: Action(reset=True))
            b.handler = handler_of(lambda req: Action(reset=True))
            async with proxy(service(a.address, b.address, passive=None), settings=FAST) as srv:
                response = await request(port_of(srv), "POST", "/pay", body=b"once")
        assert response.status == 502
        assert len(a.requests) + len(b.requests) == 1

    run(main())


def test_get_is_retried_on_the_next_target_after_a_reset() -> None:
    # proxy_next_upstream.t: "error" moves an idempotent request to the next peer.
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            a.handler = handler_of(lambda req: Action(reset=True))
            async with proxy(service(a.address, b.address, passive=None), settings=FAST) as srv:
                responses = [await request(port_of(srv), path=f"/{i}") for i in range(4)]
        assert [(r.status, r.body) for r in responses] == [(200, b"b")] * 4
        # Round robin starts every other request at a; each of those failed over to b.
        assert [r.path for r in a.requests] == ["/0", "/2"]
        assert [r.path for r in b.requests] == ["/0", "/1", "/2", "/3"]

    run(main())


def test_post_is_retried_on_the_next_target_when_nothing_was_sent() -> None:
    async def main() -> None:
        async with one_backend(handler=counting({})) as live:
            dead = f"127.0.0.1:{closed_port()}"
            async with proxy(service(dead, live.address, passive=None), settings=FAST) as srv:
                responses = [
                    await request(port_of(srv), "POST", f"/{i}", body=b"p%d" % i) for i in range(4)
                ]
        assert [r.status for r in responses] == [200] * 4
        # Round robin sent some of them to the dead target first; each still arrived once.
        assert [(r.path, r.body) for r in live.requests] == [
            (f"/{i}", b"p%d" % i) for i in range(4)
        ]

    run(main())


def test_upstream_idle_timeout_closes_idle_connections() -> None:
    settings = ProxySettings(upstream_idle_timeout=0.05, read_timeout=2.0)

    async def main() -> None:
        backend = await ClosingBackend(name="b").start()
        try:
            async with proxy(service(backend.address), settings=settings) as srv:
                first = await request(port_of(srv), path="/1")
                async with asyncio.timeout(DEADLINE):
                    await backend._closed_event.wait()
                assert (backend.connections, backend.closed) == (1, 1)
                assert not pool_of(srv).idle
                second = await request(port_of(srv), path="/2")
        finally:
            await backend.stop()
        assert (first.status, second.status) == (200, 200)
        assert backend.connections == 2

    run(main())


# -- 4. bad input never reaches an app --------------------------------------------

BAD_REQUESTS = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "two-different-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
    "cl-signed": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    "invalid-chunk-size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-size-overflow": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000a\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "bad-chunk-after-good-one": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n5x\r\nworld\r\n0\r\n\r\n",
        400,
    ),
    "chunk-data-overrun": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: a\r\n b\r\n\r\n", 400),
    "space-before-colon": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "nul-in-header": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "http09": (b"GET /\r\n\r\n", 400),
    "http2-version": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    "request-line-extra": (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
    "no-space-after-method": (b"GET/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "lowercase-method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "host-with-space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host-with-userinfo": (b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n", 400),
    "host-with-path": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "host-bad-port": (b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", 400),
    "absolute-form-bad-scheme": (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", 501),
    "te-gzip-chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "te-xchunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    "expect-other": (
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n",
        417,
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_is_refused_and_never_reaches_the_app(name: str) -> None:
    raw, status = BAD_REQUESTS[name]

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            data = await exchange(port_of(srv), raw)  # returns once the proxy closed
            after = await request(port_of(srv), path="/after")
        [response] = split_responses(data)
        assert response.status == status, data
        assert response.header("connection") == "close"
        assert after.status == 200
        assert [r.path for r in backend.requests] == ["/after"]
        assert backend.connections == 1  # not even a connection for the refused request

    run(main())


def test_pipelined_request_after_a_bad_one_is_not_forwarded() -> None:
    raw = b"GET /1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + raw_request("GET", "/smuggled")

    async def main() -> None:
        async with one_backend() as backend, proxy(service(backend.address), settings=FAST) as srv:
            data = await exchange(port_of(srv), raw)
        assert [r.status for r in split_responses(data)] == [400]
        assert backend.requests == []
        assert backend.connections == 0

    run(main())


def test_invalid_chunk_after_the_head_was_forwarded_never_completes_the_request() -> None:
    async def main() -> None:
        raw_backend = await RawBackend().start()
        try:
            async with proxy(service(raw_backend.address), settings=FAST) as srv:
                reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
                writer.write(raw_request("POST", "/c", [("Transfer-Encoding", "chunked")]))
                writer.write(b"5\r\nhello\r\n")
                await until(
                    lambda: bool(raw_backend.received) and b"hello" in raw_backend.received[0],
                    "the head and the first chunk reached the backend",
                )
                writer.write(b"zz\r\nworld\r\n0\r\n\r\n")
                async with asyncio.timeout(DEADLINE):
                    data = await reader.read(-1)
                writer.close()
                await until(lambda: raw_backend.ended[0], "the proxy cut the upstream connection")
        finally:
            raw_backend.stop()
        assert [r.status for r in split_responses(data)] == [400]
        [forwarded] = raw_backend.received
        assert forwarded.endswith(b"\r\n\r\n5\r\nhello\r\n"), bytes(forwarded)
        assert b"world" not in forwarded
        assert b"0\r\n\r\n" not in forwarded

    run(main())
