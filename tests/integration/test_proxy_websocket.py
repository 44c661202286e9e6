"""WebSocket / Upgrade through real sockets (issue 2, point 7).

Ports the ideas of nginx-tests proxy_websocket.t: after a 101 the proxy is a
byte tunnel both ways (small and large frames), and an Upgrade the backend
declines is an ordinary response. Plus what a deploy needs: the tunnel
counts as in flight, and a drain either keeps it until its deadline or
closes it at once (`websocket_drain`). The backend is the real demo app.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness import Request, backends, ok, parse_responses, port_of, proxy, run, service, until
from harness import exchange as raw_exchange
from zerodown.demo.process import AppProcess, spawn_app
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.target import Target


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    proc = spawn_app("v1")
    yield proc
    proc.stop()


def the_target(server: ProxyServer) -> Target:
    (target,) = server.services["web"].stable.targets
    return target


def ws_url(server: ProxyServer, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{port_of(server)}{path}"


async def echo(ws: ClientConnection, message: str | bytes) -> str | bytes:
    await ws.send(message)
    async with asyncio.timeout(5):
        return await ws.recv()


async def closed(ws: ClientConnection) -> bool:
    """True once the connection is closed (waits up to 2 s for it)."""
    try:
        async with asyncio.timeout(2):
            await ws.recv()
    except ConnectionClosed:
        return True
    except TimeoutError:
        return False
    return False


def test_messages_echo_both_ways_through_the_tunnel(app: AppProcess) -> None:
    async def main() -> None:
        async with (
            proxy(service(app.address)) as server,
            connect(ws_url(server), max_size=None) as ws,
        ):
            assert ws.response is not None
            assert ws.response.status_code == 101
            assert ws.response.headers["X-Version"] == "v1"
            assert await echo(ws, "hello") == "hello"
            assert await echo(ws, b"\x00\x01binary\xff") == b"\x00\x01binary\xff"
            for i in range(20):
                assert await echo(ws, f"message {i}") == f"message {i}"

    run(main())


def test_a_one_megabyte_message_goes_through_both_ways(app: AppProcess) -> None:
    async def main() -> None:
        payload = os.urandom(1_000_000)
        async with (
            proxy(service(app.address)) as server,
            connect(ws_url(server), max_size=None) as ws,
        ):
            assert await echo(ws, payload) == payload
            text = "é" * 500_000
            assert await echo(ws, text) == text

    run(main())


def test_an_open_tunnel_counts_as_in_flight(app: AppProcess) -> None:
    async def main() -> None:
        async with proxy(service(app.address)) as server:
            target = the_target(server)
            assert target.in_flight == 0
            async with connect(ws_url(server)) as ws:
                assert await echo(ws, "x") == "x"
                assert target.in_flight == 1
                async with connect(ws_url(server)) as second:
                    assert await echo(second, "y") == "y"
                    assert target.in_flight == 2
                await until(lambda: target.in_flight == 1, "second tunnel ended")
            await until(lambda: target.in_flight == 0, "first tunnel ended")

    run(main())


def test_drain_keep_holds_the_tunnel_open_until_the_deadline_then_closes_it(
    app: AppProcess,
) -> None:
    async def main() -> None:
        async with proxy(service(app.address, websocket_drain="keep")) as server:
            async with connect(ws_url(server)) as ws:
                assert await echo(ws, "before") == "before"
                drain = asyncio.create_task(server.drain("web", app.address, timeout=0.3))
                await until(lambda: the_target(server).state == "draining", "draining")
                # Draining, and the tunnel still carries messages both ways.
                assert await echo(ws, "during") == "during"
                assert not drain.done()
                result = await drain
                assert (result.completed, result.cancelled) == (False, 1)
                assert await closed(ws)
            await until(lambda: the_target(server).in_flight == 0, "tunnel no longer in flight")

    run(main())


def test_drain_close_closes_the_tunnel_at_once(app: AppProcess) -> None:
    async def main() -> None:
        async with proxy(service(app.address, websocket_drain="close")) as server:
            async with connect(ws_url(server)) as ws:
                assert await echo(ws, "before") == "before"
                # A long deadline: the drain can only end early because the tunnel closed.
                result = await server.drain("web", app.address, timeout=5.0)
                assert result.completed
                assert await closed(ws)
            assert the_target(server).in_flight == 0

    run(main())


def test_an_upgrade_the_backend_declines_is_an_ordinary_response() -> None:
    async def main() -> None:
        async def decline(req: Request) -> bytes:
            return ok(b"no websockets here: " + req.path.encode(), status=404)

        upgrade = (
            b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        # Sent at once: the follow-up is held until the answer, then parsed as
        # the client's next request (as nginx does), not sent as tunnel bytes.
        follow_up = b"GET /next HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
        async with backends("b", handler=decline) as (b,), proxy(service(b.address)) as server:
            data = await raw_exchange(port_of(server), upgrade + follow_up)
            assert server.services["web"].stable.targets[0].in_flight == 0
        first, second = parse_responses(data)
        assert (first.status, first.body) == (404, b"no websockets here: /ws")
        assert first.header("upgrade") is None
        assert first.header("connection") is None  # the client connection stays open
        assert (second.status, second.body) == (404, b"no websockets here: /next")
        # The backend was asked to upgrade (hop-by-hop headers kept for Upgrade).
        seen, after = b.requests
        assert (seen.header("upgrade") or "").lower() == "websocket"
        assert (after.path, after.header("upgrade")) == ("/next", None)

    run(main())


def test_a_websocket_handshake_refused_by_the_app_reaches_the_client(app: AppProcess) -> None:
    async def main() -> None:
        async with proxy(service(app.address)) as server:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url(server, "/not-a-socket")):
                    pass
            assert refused.value.response.status_code == 403
            # uvicorn answers the refusal itself (no X-Version); the proxy still tags it.
            assert refused.value.response.headers.get("X-Request-ID")
            await until(lambda: the_target(server).in_flight == 0, "no tunnel left")

    run(main())


def test_stop_closes_an_open_tunnel_at_its_deadline(app: AppProcess) -> None:
    async def main() -> None:
        async with proxy(service(app.address)) as server:
            target = the_target(server)
            async with connect(ws_url(server)) as ws:
                assert await echo(ws, "before") == "before"
                stop = asyncio.create_task(server.stop(timeout=0.2))
                await until(lambda: server.stopping, "stop begun")
                # In flight until the deadline: the tunnel still carries messages.
                assert await echo(ws, "during") == "during"
                await stop
                assert await closed(ws)
            await until(lambda: target.in_flight == 0, "tunnel no longer in flight")

    run(main())
