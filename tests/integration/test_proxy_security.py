"""Issue 8's data-plane hardening that is not about framing: each test fails
on the proxy before the fix and shows the bound through real sockets.

- a read timeout on a reused upstream connection is not a keep-alive race
  (the hung target gets the request once, not twice);
- `send_timeout` cuts a client that stops reading, freeing its upstream;
- `max_response_header_size` bounds what an upstream may make us hold;
- client-identity headers pass only from `trusted_proxies`;
- `Host: name.` routes as `name`; an HTTP/0.9 request is answered at once.

(Framing and desync, items 1-4, are in test_proxy_desync.py.)
"""

from __future__ import annotations

import asyncio
import socket

from harness import (
    DEADLINE,
    Action,
    ClosingBackend,
    KeepAliveClient,
    Request,
    backends,
    exchange,
    ok,
    parse_responses,
    port_of,
    proxy,
    request,
    run,
    service,
    until,
)
from zerodown.proxy.settings import ProxySettings

TICK = 0.2  # every timeout under test


def settings(**overrides: object) -> ProxySettings:
    base: dict[str, object] = {
        "header_timeout": 2.0,
        "body_timeout": 2.0,
        "keepalive_timeout": 2.0,
        "connect_timeout": 0.5,
        "read_timeout": 2.0,
        "queue_timeout": 0.5,
    }
    return ProxySettings(**{**base, **overrides})  # type: ignore[arg-type]


# -- item 7: a timeout is not a keep-alive race ------------------------------------


def test_a_read_timeout_on_a_reused_connection_is_not_retried_on_the_same_target() -> None:
    # Before: the hung target got GET /2 twice (once more "on a fresh
    # connection", as if the app had closed an idle one) and the client waited
    # twice read_timeout, outside retry_timeout and the budget.
    served = 0

    async def first_then_hang(req: Request) -> bytes | Action:
        nonlocal served
        served += 1
        return ok(req.path.encode()) if served == 1 else Action(hang=True)

    async def main() -> None:
        async with (
            backends("b", handler=first_then_hang) as (backend,),
            proxy(service(backend.address), settings=settings(read_timeout=TICK)) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            first = await client.request("GET", "/1")
            second = await client.request("GET", "/2")
        assert (first.status, second.status) == (200, 504)
        assert [r.path for r in backend.requests] == ["/1", "/2"]
        assert backend.connections == 1

    run(main())


def test_a_read_timeout_on_a_reused_connection_moves_on_to_the_next_target() -> None:
    # The ordinary retry rules still apply: an idempotent request goes to the
    # next target (nginx's proxy_next_upstream timeout), once.
    hang_on_second: dict[str, int] = {"a": 0, "b": 0}

    def handler(name: str) -> object:
        async def handle(req: Request) -> bytes | Action:
            hang_on_second[name] += 1
            if name == "a" and hang_on_second[name] == 2:
                return Action(hang=True)
            return ok(name.encode())

        return handle

    async def main() -> None:
        async with (
            backends("a", handler=handler("a")) as (a,),
            backends("b", handler=handler("b")) as (b,),
            proxy(
                service(a.address, b.address, balance="round_robin"),
                settings=settings(read_timeout=TICK),
            ) as srv,
            KeepAliveClient(port_of(srv)) as client,
        ):
            bodies = [(await client.request("GET", f"/{i}")).body for i in range(4)]
        # a, b, then a hangs on its reused connection: b answers instead.
        assert bodies[:3] == [b"a", b"b", b"b"]
        assert sum(1 for r in a.requests if r.path == "/2") == 1

    run(main())


# -- item 8: send_timeout ------------------------------------------------------------


def test_a_client_that_stops_reading_is_cut_at_send_timeout_and_frees_its_upstream() -> None:
    body = b"x" * (32 * 1024 * 1024)  # far more than every buffer on the way

    async def big(req: Request) -> bytes:
        return ok(body)

    async def main() -> None:
        backend = await ClosingBackend(name="b", handler=big).start()
        try:
            async with proxy(service(backend.address), settings=settings(send_timeout=TICK)) as srv:
                with socket.create_connection(("127.0.0.1", port_of(srv))) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    # Never read: the proxy must give up on us, and on the upstream.
                    await until(lambda: backend.closed == 1, "upstream freed", timeout=DEADLINE)
                    await until(lambda: not srv.connections, "client cut", timeout=DEADLINE)
        finally:
            await backend.stop()

    run(main())


def test_a_slow_reader_within_send_timeout_gets_the_whole_body() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB

    async def big(req: Request) -> bytes:
        return ok(body)

    async def main() -> None:
        async with (
            backends("b", handler=big) as (backend,),
            proxy(service(backend.address), settings=settings(send_timeout=1.0)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := await reader.read(256 * 1024):
                data += chunk
                await asyncio.sleep(0.01)  # slow, but never idle for send_timeout
            writer.close()
        (response,) = parse_responses(data)
        assert response.body == body

    run(main())


# -- item 9: max_response_header_size ------------------------------------------------


def test_a_response_head_past_max_response_header_size_is_502() -> None:
    async def huge(req: Request) -> bytes:
        size = int(req.path.strip("/"))
        return ok(b"fine", headers={"X-Big": "y" * size})

    async def main() -> None:
        limits = settings(max_response_header_size=16 * 1024)
        async with (
            backends("b", handler=huge) as (backend,),
            proxy(service(backend.address), settings=limits) as srv,
        ):
            inside = await request(port_of(srv), path="/8000")
            past = await request(port_of(srv), path="/20000")
            far_past = await request(port_of(srv), path="/5000000")  # spans many reads
        assert (inside.status, inside.body) == (200, b"fine")
        assert past.status == 502
        assert far_past.status == 502
        assert past.header("x-big") is None
        assert far_past.header("x-big") is None

    run(main())


# -- item 12: client-identity headers ------------------------------------------------

IDENTITY = {
    "X-Real-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "True-Client-IP": "6.6.6.6",
    "X-Client-IP": "6.6.6.6",
    "X-Cluster-Client-IP": "6.6.6.6",
    "CF-Connecting-IP": "6.6.6.6",
    "X-Forwarded-Ssl": "on",
    "X_Real_IP": "6.6.6.6",  # the WSGI environ spelling of X-Real-IP
}


def test_client_identity_headers_from_an_untrusted_client_never_reach_the_app() -> None:
    async def main() -> None:
        async with (
            backends("b") as (backend,),
            proxy(service(backend.address), settings=settings()) as srv,
        ):
            response = await request(port_of(srv), headers=IDENTITY)
        assert response.status == 200
        (seen,) = backend.requests
        names = {name.lower() for name, _ in seen.headers}
        assert not names & {name.lower() for name in IDENTITY}
        assert seen.all("x-forwarded-for") == ["127.0.0.1"]

    run(main())


def test_client_identity_headers_from_a_trusted_proxy_pass_unchanged() -> None:
    async def main() -> None:
        trusted = settings(trusted_proxies=("127.0.0.0/8",))
        async with (
            backends("b") as (backend,),
            proxy(service(backend.address), settings=trusted) as srv,
        ):
            await request(port_of(srv), headers={k: v for k, v in IDENTITY.items() if "_" not in k})
        (seen,) = backend.requests
        assert seen.header("x-real-ip") == "6.6.6.6"
        assert seen.header("forwarded") == "for=6.6.6.6;proto=https"
        assert seen.header("x-forwarded-port") == "443"

    run(main())


def test_connection_cannot_remove_the_proxys_own_headers() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nHost: example.test\r\n"
        b"Connection: X-Forwarded-For, X-Request-ID, Host, close\r\n\r\n"
    )

    async def main() -> None:
        async with (
            backends("b") as (backend,),
            proxy(service(backend.address), settings=settings()) as srv,
        ):
            (response,) = parse_responses(await exchange(port_of(srv), raw))
        assert response.status == 200
        (seen,) = backend.requests
        assert seen.all("host") == ["example.test"]
        assert seen.all("x-forwarded-for") == ["127.0.0.1"]
        assert seen.all("x-request-id") == [response.header("x-request-id")]

    run(main())


# -- item 13: a trailing dot, HTTP/0.9 ------------------------------------------------


def test_a_host_with_a_trailing_dot_routes_as_the_name_without_it() -> None:
    async def main() -> None:
        async with backends("named", "other") as (named, other):
            routes = (
                service(named.address, name="named", host="api.example.com"),
                service(other.address, name="other", host="*"),
            )
            async with proxy(*routes, settings=settings()) as srv:
                dotted = await request(port_of(srv), host="api.example.com.")
                with_port = await request(port_of(srv), host="API.example.com.:8080")
        assert (dotted.status, dotted.body) == (200, b"named")
        assert (with_port.status, with_port.body) == (200, b"named")
        assert [r.header("host") for r in named.requests] == [
            "api.example.com.",
            "API.example.com.:8080",
        ]

    run(main())


def test_an_http09_request_is_refused_at_once_not_at_the_header_timeout() -> None:
    async def main() -> None:
        async with (
            backends("b") as (backend,),
            proxy(service(backend.address), settings=settings(header_timeout=30.0)) as srv,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(b"GET /\r\n")
            async with asyncio.timeout(2.0):  # far under header_timeout
                data = await reader.read(-1)
            writer.close()
        (response,) = parse_responses(data)
        assert response.status == 400
        assert backend.requests == []

    run(main())


# -- a tunnel's half-close -------------------------------------------------------------


def test_a_client_half_close_in_a_tunnel_reaches_the_target_and_frees_its_connection() -> None:
    # Before: the FIN stopped at the proxy; the target's connection stayed busy
    # for good, and with max_conns_per_target = 1 every other client got 503.
    saw_eof = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"upgrade" in head.lower():
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
            )
            while await reader.read(65536):
                pass
            saw_eof.set()  # the client's FIN came through: we are done too
        else:
            writer.write(ok(b"plain"))
            await writer.drain()
        writer.close()

    async def main() -> None:
        backend = await asyncio.start_server(serve, "127.0.0.1", 0)
        address = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        limits = settings(max_conns_per_target=1, queue_timeout=1.0)
        async with proxy(service(address), settings=limits) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: example.test\r\n"
                b"Connection: upgrade\r\nUpgrade: x\r\n\r\n"
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            writer.write_eof()
            async with asyncio.timeout(DEADLINE):
                await saw_eof.wait()
                assert await reader.read() == b""  # the tunnel ended on both sides
            writer.close()
            after = await request(port_of(srv))
        backend.close()
        assert (after.status, after.body) == (200, b"plain")

    run(main())
