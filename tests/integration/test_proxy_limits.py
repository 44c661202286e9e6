"""Limits and timeouts of the embedded proxy (issue 2, point 10), on real sockets.

Every limit is shown from both sides where it has two: the request just
inside it passes, the one just past it gets the proxy's own status and never
reaches the app. Timeouts are tens of milliseconds; assertions are on what
came over the wire and what the backend saw, never on how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness import (
    DEADLINE,
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
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import PoolSpec, ServiceSpec, TargetSpec

TICK = 0.05  # every timeout under test


# -- helpers -------------------------------------------------------------------


def settings(**limits: float) -> ProxySettings:
    """Short deadlines everywhere, `limits` on top."""
    base: dict[str, float] = {
        "header_timeout": 2.0,
        "body_timeout": 2.0,
        "keepalive_timeout": 2.0,
        "connect_timeout": 0.5,
        "read_timeout": 2.0,
        "queue_timeout": 0.5,
    }
    return ProxySettings(**{**base, **limits})  # type: ignore[arg-type]


def head_of(data: bytes) -> Response:
    """The first response in `data`, with its body when it has a Content-Length."""
    end = data.index(b"\r\n\r\n") + 4
    status_line, *lines = data[: end - 4].decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), status_line
    response = Response(int(status_line.split(" ")[1]), [tuple(x.split(": ", 1)) for x in lines])  # type: ignore[misc]
    length = response.header("content-length")
    response.body = data[end : end + int(length)] if length is not None else data[end:]
    response.raw = data
    return response


def only_response(data: bytes) -> Response:
    """`data` is exactly one response with a Content-Length body, and nothing after it."""
    response = head_of(data)
    length = int(response.header("content-length") or -1)
    assert len(data) == data.index(b"\r\n\r\n") + 4 + length, data
    return response


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes; a reset after the data is treated as a close."""
    data = b""
    async with asyncio.timeout(DEADLINE):
        with contextlib.suppress(ConnectionResetError):
            while piece := await reader.read(65536):
                data += piece
    return data


@contextlib.asynccontextmanager
async def one_backend(**kwargs: object) -> AsyncIterator[Backend]:
    async with backends("b", **kwargs) as (backend,):
        yield backend


@dataclass
class HangingBackend(Backend):
    """Reads each request head, writes `partial`, then waits for `release`
    (set at the latest when the test ends), so no task outlives its loop."""

    partial: bytes = b""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            self.requests.append(Request(method, path, version, []))
            writer.write(self.partial)
            await self.release.wait()
        writer.close()


@contextlib.asynccontextmanager
async def hanging_backend(partial: bytes = b"") -> AsyncIterator[HangingBackend]:
    backend = await HangingBackend(name="hang", partial=partial).start()
    try:
        yield backend
    finally:
        backend.release.set()
        await asyncio.sleep(0.01)  # the stalled handlers see the release and close
        await backend.stop()


def web(*addresses: str, **spec: Any) -> ServiceSpec:
    """The harness service with passive ejection off: each test counts its own failures."""
    spec.setdefault("passive", None)
    return service(*addresses, **spec)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def unanswered_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connect to it never completes.

    listen(0) and nobody accepting; a few connects fill the queue, and Linux
    then drops further SYNs (tcp_abort_on_overflow=0), so the next connect
    hangs until the caller's deadline. Loopback only, nothing routed.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# -- client-side timeouts --------------------------------------------------------


def test_partial_head_gets_408_and_a_close_after_the_header_timeout() -> None:
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(header_timeout=TICK)) as srv,
        ):
            data = await exchange(port_of(srv), b"GET / HTTP/1.1\r\nHost: a\r\nX-Partial: ")
        response = only_response(data)
        assert response.status == 408
        assert response.header("connection") == "close"
        assert (backend.requests, backend.connections) == ([], 0)

    run(main())


def test_a_head_trickling_in_does_not_restart_the_header_timeout() -> None:
    async def main() -> tuple[bytes, int]:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(header_timeout=TICK)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
            answer = asyncio.create_task(read_to_close(reader))
            sent = 0
            # One header line every 10 ms, never the blank line that ends the head.
            while not answer.done() and sent < 1000:
                writer.write(b"X-Slow-%d: x\r\n" % sent)
                sent += 1
                await asyncio.sleep(0.01)
            data = await answer
            writer.close()
            assert (backend.requests, backend.connections) == ([], 0)
            return data, sent

    data, sent = run(main())
    assert only_response(data).status == 408
    assert sent < 1000  # cut by the timeout, not by the test's own bound


def test_idle_keep_alive_client_connection_is_closed_silently() -> None:
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(keepalive_timeout=TICK)) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            response = await client.request("GET", "/")
            assert client.reader is not None
            rest = await read_to_close(client.reader)
        assert (response.status, response.header("connection")) == (200, None)
        assert rest == b""
        assert len(backend.requests) == 1

    run(main())


@pytest.mark.parametrize(
    ("framing", "partial"),
    [("Content-Length", b"abc"), ("Transfer-Encoding", b"5\r\nhel")],
    ids=["content-length", "chunked"],
)
def test_stalled_body_gets_408_and_the_app_never_gets_a_whole_request(
    framing: str, partial: bytes
) -> None:
    value = "10" if framing == "Content-Length" else "chunked"
    head = f"POST /up HTTP/1.1\r\nHost: a\r\n{framing}: {value}\r\n\r\n".encode()

    async def main() -> None:
        backend = await ClosingBackend(name="b").start()
        try:
            async with proxy(web(backend.address), settings=settings(body_timeout=TICK)) as srv:
                data = await exchange(port_of(srv), head + partial)
                await until(lambda: backend.closed == backend.connections, "upstream cut")
        finally:
            await backend.stop()
        response = only_response(data)
        assert (response.status, response.header("connection")) == (408, "close")
        assert backend.requests == []
        assert backend.connections <= 1

    run(main())


def test_a_slow_but_steady_body_is_not_cut_by_the_body_timeout() -> None:
    # The body timeout bounds the gap between reads, not the whole upload.
    pieces = [b"%02d" % i * 5 for i in range(8)]

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(body_timeout=TICK)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            size = sum(map(len, pieces))
            writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            for piece in pieces:  # 8 x 20 ms: longer than the timeout in all
                await asyncio.sleep(TICK * 0.4)
                writer.write(piece)
            response = await read_response(reader)
            writer.close()
        assert response.status == 200
        assert [r.body for r in backend.requests] == [b"".join(pieces)]

    run(main())


def test_client_timeouts_do_not_cut_a_request_waiting_for_its_answer() -> None:
    async def slow(req: Request) -> bytes:
        await asyncio.sleep(TICK)  # longer than every client timeout below
        return ok(b"late")

    async def main() -> None:
        async with (
            one_backend(handler=slow) as backend,
            proxy(
                web(backend.address),
                settings=settings(header_timeout=0.02, body_timeout=0.02, keepalive_timeout=0.02),
            ) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            first = await client.request("GET", "/1")
            second = await client.request("POST", "/2", body=b"x")
        assert [(r.status, r.body) for r in (first, second)] == [(200, b"late")] * 2
        assert len(backend.requests) == 2

    run(main())


# -- size limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Big": "a" * 900}, 200),
        ({"X-Big": "a" * 2000}, 431),
        ({f"X-Many-{i}": "a" * 20 for i in range(60)}, 431),
    ],
    ids=["inside", "one-big-header", "many-headers"],
)
def test_header_size_limit(headers: dict[str, str], status: int) -> None:
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_header_size=1024)) as srv,
        ):
            response = await request(port_of(srv), headers=headers)
        assert response.status == status
        assert len(backend.requests) == (1 if status == 200 else 0)

    run(main())


def test_an_endless_header_line_is_cut_at_the_limit() -> None:
    # llhttp holds a header that spans reads until its line ends; the proxy
    # must count raw bytes, or one endless line would grow without bound.
    async def main() -> tuple[bytes, int]:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_header_size=4096)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
            answer = asyncio.create_task(read_to_close(reader))
            sent = 0
            with contextlib.suppress(ConnectionError):
                while not answer.done() and sent < 1024 * 1024:
                    writer.write(b"a" * 1024)
                    sent += 1024
                    await asyncio.sleep(0.001)
            data = await answer
            writer.close()
            assert (backend.requests, backend.connections) == ([], 0)
            return data, sent

    data, sent = run(main())
    assert only_response(data).status == 431
    assert sent < 1024 * 1024  # answered while the line was still growing


@pytest.mark.parametrize(("length", "status"), [(64, 200), (65, 414), (5000, 414)])
def test_uri_size_limit(length: int, status: int) -> None:
    path = "/" + "u" * (length - 1)

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_uri_size=64)) as srv,
        ):
            response = await request(port_of(srv), path=path)
        assert response.status == status
        assert [r.path for r in backend.requests] == ([path] if status == 200 else [])

    run(main())


@pytest.mark.parametrize(("size", "status"), [(100, 200), (101, 413)])
def test_body_limit_by_content_length(size: int, status: int) -> None:
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_body_size=100)) as srv,
        ):
            response = await request(port_of(srv), "POST", "/up", body=b"x" * size)
        assert response.status == status
        assert [r.body for r in backend.requests] == ([b"x" * size] if status == 200 else [])

    run(main())


@pytest.mark.parametrize(("size", "status"), [(100, 200), (101, 413), (5000, 413)])
def test_body_limit_by_a_chunked_stream(size: int, status: int) -> None:
    body = bytes(range(256)) * 20
    chunks = [body[i : i + 30] for i in range(0, size, 30)]
    chunks[-1] = chunks[-1][: size - 30 * (len(chunks) - 1)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_body_size=100)) as srv,
        ):
            data = await exchange(port_of(srv), head + wire)
        response = head_of(data)
        assert response.status == status
        assert [r.body for r in backend.requests] == ([body[:size]] if status == 200 else [])

    run(main())


def test_chunked_body_passing_the_limit_after_the_head_was_forwarded_is_cut() -> None:
    async def main() -> None:
        raw_backend = await RawBackend().start()
        try:
            async with proxy(web(raw_backend.address), settings=settings(max_body_size=100)) as srv:
                reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
                writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"3c\r\n" + b"a" * 60 + b"\r\n")
                await until(
                    lambda: bool(raw_backend.received) and b"a" * 60 in raw_backend.received[0],
                    "the head and the first 60 bytes reached the backend",
                )
                writer.write(b"3c\r\n" + b"b" * 60 + b"\r\n0\r\n\r\n")
                data = await read_to_close(reader)
                writer.close()
                await until(lambda: raw_backend.ended[0], "the proxy cut the upstream connection")
        finally:
            raw_backend.stop()
        response = only_response(data)
        assert (response.status, response.header("connection")) == (413, "close")
        [forwarded] = raw_backend.received
        assert b"b" not in forwarded.split(b"\r\n\r\n", 1)[1]  # nothing past the limit

    run(main())


def test_an_early_answer_from_the_app_reaches_a_client_still_uploading() -> None:
    # The app refuses after the head (as an app's own 413 or 401 does) and
    # closes; the client is still sending its body and must get that answer.
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 413 Too Big\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
            )
            await writer.drain()
        writer.close()

    size = 4 * 1024 * 1024

    async def main() -> bytes:
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with proxy(web(address), settings=settings()) as srv:
                reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))

                async def upload() -> None:
                    with contextlib.suppress(ConnectionError):
                        writer.write(
                            b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
                        )
                        for _ in range(size // 65536):
                            writer.write(b"x" * 65536)
                            await writer.drain()

                sender = asyncio.create_task(upload())
                data = await read_to_close(reader)
                sender.cancel()
                writer.transport.abort()
                return data
        finally:
            server.close()

    response = only_response(run(main()))
    assert (response.status, response.body) == (413, b"big!")


def test_body_limit_answers_before_the_body_and_without_100_continue() -> None:
    head = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
    )

    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_body_size=100)) as srv,
        ):
            data = await exchange(port_of(srv), head)  # the body is never sent
        response = only_response(data)
        assert (response.status, response.header("connection")) == (413, "close")
        assert (backend.requests, backend.connections) == ([], 0)

    run(main())


def test_413_reaches_a_client_that_keeps_sending_a_big_body() -> None:
    # The client is still writing when the proxy answers and closes: the answer
    # must not be lost to a reset (RFC 9112 §9.6, "lingering close").
    size = 8 * 1024 * 1024
    head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size

    async def main() -> bytes:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_body_size=1000)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))

            async def upload() -> None:
                with contextlib.suppress(ConnectionError):
                    writer.write(head)
                    for _ in range(size // 65536):
                        writer.write(b"x" * 65536)
                        await writer.drain()

            sender = asyncio.create_task(upload())
            data = await read_to_close(reader)
            sender.cancel()
            writer.transport.abort()
            assert (backend.requests, backend.connections) == ([], 0)
            return data

    response = head_of(run(main()))
    assert (response.status, response.header("connection")) == (413, "close")


# -- upstream errors and timeouts ------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connection_refused_gives_502(method: str) -> None:
    async def main() -> None:
        async with proxy(web(f"127.0.0.1:{closed_port()}"), settings=settings()) as srv:
            response = await request(port_of(srv), method, "/", body=b"x")
        assert response.status == 502

    run(main())


def test_every_target_refusing_gives_502_once_tries_are_spent() -> None:
    async def main() -> None:
        dead = [f"127.0.0.1:{closed_port()}" for _ in range(3)]
        async with proxy(web(*dead, tries=2), settings=settings()) as srv:
            responses = [await request(port_of(srv)) for _ in range(3)]
        assert [r.status for r in responses] == [502] * 3

    run(main())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connect_timeout_gives_504(method: str) -> None:
    async def main() -> None:
        with unanswered_listener() as port:
            async with proxy(
                web(f"127.0.0.1:{port}"), settings=settings(connect_timeout=TICK)
            ) as srv:
                response = await request(port_of(srv), method, "/", body=b"x")
        assert response.status == 504

    run(main())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_backend_that_never_answers_gives_504_after_the_read_timeout(method: str) -> None:
    async def main() -> None:
        async with (
            hanging_backend() as backend,
            proxy(web(backend.address), settings=settings(read_timeout=TICK)) as srv,
        ):
            response = await request(port_of(srv), method, "/slow", body=b"x")
        assert response.status == 504
        assert [r.method for r in backend.requests] == [method]

    run(main())


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 X\r\nContent-Length: 100\r\n\r\nfirst-part",
        b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\na\r\nfirst-part\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_backend_stalling_mid_body_cuts_the_client_without_a_clean_end(partial: bytes) -> None:
    async def main() -> bytes:
        async with (
            hanging_backend(partial) as backend,
            proxy(web(backend.address), settings=settings(read_timeout=TICK)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            data = await read_to_close(reader)
            writer.close()
            assert len(backend.requests) == 1
            return data

    data = run(main())
    response = head_of(data)
    assert response.status == 200
    assert b"first-part" in response.body
    # Neither the promised length nor a last chunk: the client can tell it was cut.
    assert len(response.body) < 100
    assert not data.endswith(b"0\r\n\r\n")


def test_a_full_target_queues_and_a_second_request_gets_503_at_the_queue_deadline() -> None:
    async def main() -> None:
        async with (
            hanging_backend() as backend,
            proxy(
                web(backend.address),
                settings=settings(max_conns_per_target=1, queue_timeout=0.2, read_timeout=5.0),
            ) as srv,
        ):
            _, holder = await asyncio.open_connection("127.0.0.1", port_of(srv))
            holder.write(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
            await until(lambda: len(backend.requests) == 1, "the first request is in flight")
            second = await request(port_of(srv), path="/queued")
            backend.release.set()  # the first request ends (502) and its client with it
            holder.close()
        assert second.status == 503
        assert [r.path for r in backend.requests] == ["/hold"]
        assert backend.connections == 1

    run(main())


def test_a_queued_request_gets_the_slot_when_it_frees() -> None:
    async def slow(req: Request) -> bytes:
        await asyncio.sleep(0.02)
        return ok(req.path.encode())

    async def main() -> None:
        async with (
            one_backend(handler=slow) as backend,
            proxy(
                web(backend.address),
                settings=settings(max_conns_per_target=1, queue_timeout=2.0),
            ) as srv,
        ):
            responses = await asyncio.gather(
                *(request(port_of(srv), path=f"/{i}") for i in range(4))
            )
        assert sorted((r.status, r.body) for r in responses) == [
            (200, f"/{i}".encode()) for i in range(4)
        ]
        assert backend.connections == 1  # one slot, handed from request to request

    run(main())


# -- nowhere to send it -------------------------------------------------------------


def test_a_service_without_targets_answers_503() -> None:
    async def main() -> None:
        async with proxy(web(), settings=settings()) as srv:
            response = await request(port_of(srv))
        assert response.status == 503

    run(main())


def test_all_targets_down_answers_503_without_touching_them() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            spec = ServiceSpec(
                name="web",
                health=None,
                stable=PoolSpec(
                    targets=tuple(TargetSpec(address=x.address, state="down") for x in (a, b))
                ),
            )
            async with proxy(spec, settings=settings()) as srv:
                responses = [await request(port_of(srv)) for _ in range(3)]
        assert [r.status for r in responses] == [503] * 3
        assert (a.connections, b.connections) == (0, 0)

    run(main())


@pytest.mark.parametrize(
    ("host", "path", "status"),
    [
        ("app.test", "/api", 200),
        ("app.test", "/api/v1/x?q=1", 200),
        ("APP.test:8080", "/api/", 200),
        ("other.test", "/api", 404),
        ("app.test", "/", 404),
        ("app.test", "/apix", 404),
        ("app.test.evil", "/api", 404),
    ],
)
def test_unknown_host_or_path_gets_404(host: str, path: str, status: int) -> None:
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address, host="app.test", path="/api"), settings=settings()) as srv,
        ):
            response = await request(port_of(srv), path=path, host=host)
        assert response.status == status
        assert [r.path for r in backend.requests] == ([path] if status == 200 else [])

    run(main())


def test_absolute_form_target_routes_by_its_own_host() -> None:
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address, host="app.test"), settings=settings()) as srv,
        ):
            ok_raw = (
                b"GET http://app.test/x?y=1 HTTP/1.1\r\n"
                b"Host: other.test\r\nConnection: close\r\n\r\n"
            )
            bad_raw = (
                b"GET http://other.test/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
            )
            good = head_of(await exchange(port_of(srv), ok_raw))
            bad = head_of(await exchange(port_of(srv), bad_raw))
        assert (good.status, bad.status) == (200, 404)
        assert [r.path for r in backend.requests] == ["/x?y=1"]  # origin-form upstream

    run(main())


def test_limits_are_per_request_on_a_kept_alive_connection() -> None:
    # After a request inside every limit, the next one on the same connection is
    # still measured from its own start (431 here), and the connection then ends.
    async def main() -> None:
        async with (
            one_backend() as backend,
            proxy(web(backend.address), settings=settings(max_header_size=1024)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"GET /1 HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 900 + b"\r\n\r\n")
            first = await read_response(reader)
            writer.write(b"GET /2 HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 900 + b"\r\n\r\n")
            second = await read_response(reader)
            writer.write(b"GET /3 HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 2000 + b"\r\n\r\n")
            third = await read_response(reader)
            rest = await read_to_close(reader)
            writer.close()
        assert [r.status for r in (first, second, third)] == [200, 200, 431]
        assert rest == b""
        assert [r.path for r in backend.requests] == ["/1", "/2"]

    run(main())
