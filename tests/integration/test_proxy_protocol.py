"""`[proxy] proxy_protocol` on the embedded data plane, through real sockets.

127.0.0.1 is the trusted balancer; 127.0.0.2 (loopback too, on Linux) is
a peer that is not. The client a trusted header names is the one the app
sees in X-Forwarded-For, the one allow/deny judge and the access log
names; an untrusted peer's header is not HTTP and is refused as such.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import trustme

from certs import client_context, write_cert
from harness import DEADLINE, backends, proxy, read_response, run, service
from proxy_protocol_harness import BALANCER, GET, STRANGER, send, status, tls_get, v1, v2
from zerodown.guardspec import GuardSpec
from zerodown.proxy.proxy_protocol import V2_SIGNATURE
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings, TlsSettings
from zerodown.routing import RoutingTable


def test_a_trusted_header_names_the_client_an_untrusted_one_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    settings = ProxySettings(
        trusted_proxies=(f"{BALANCER}/32",), proxy_protocol=True, access_log=str(log)
    )
    guard = GuardSpec(deny=("192.0.2.0/24",))

    async def main() -> list[int | None]:
        async with (
            backends("a") as (a,),
            proxy(service(a.address, guard=guard), settings=settings) as s,
        ):
            port = s.addresses[0][1]
            answers = [
                await send(port, v1("10.1.2.3") + GET),  # the balancer, for 10.1.2.3
                await send(port, v2("192.0.2.9") + GET),  # for a denied client
                await send(port, GET),  # the balancer forgot its header
                await send(port, b"PROXY TCP4 10.1.2.3 nowhere 1 2\r\n" + GET),
                await send(port, v1("10.1.2.3") + GET, source=STRANGER),  # not ours to say
                await send(port, GET, source=STRANGER),  # a plain client, served as itself
            ]
            assert [r.header("X-Forwarded-For") for r in a.requests] == ["10.1.2.3", STRANGER]
            assert s.stats().services["web"].denied == 1
            return [status(raw) for raw in answers]

    assert run(main()) == [200, 403, None, None, 400, 200]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["client"], e["status"]) for e in entries] == [
        ("10.1.2.3", 200),
        ("192.0.2.9", 403),
        (STRANGER, 400),
        (STRANGER, 200),
    ]


def test_the_header_comes_before_the_tls_handshake(tmp_path: Path) -> None:
    ca = trustme.CA()
    site = write_cert(ca, tmp_path, "example.test")
    tls = TlsSettings(listen=("127.0.0.1:0",), certs=((site.cert, site.key),))
    settings = ProxySettings(trusted_proxies=(f"{BALANCER}/32",), proxy_protocol=True, tls=tls)

    async def main() -> None:
        async with backends("a") as (a,):
            server = ProxyServer(settings, RoutingTable(services=(service(a.address),)))
            await server.start(["127.0.0.1:0"])
            try:
                context = client_context(ca, version=ssl.TLSVersion.TLSv1_3)
                response = await tls_get(server.addresses[0][1], v2("10.7.7.7"), context)
            finally:
                await server.stop(timeout=1.0)
            assert response.status == 200
            (seen,) = a.requests
            assert (seen.header("X-Forwarded-For"), seen.header("X-Forwarded-Proto")) == (
                "10.7.7.7",
                "https",
            )

    run(main())


def test_a_header_in_pieces_is_waited_for_and_a_local_one_keeps_the_peer() -> None:
    settings = ProxySettings(trusted_proxies=(f"{BALANCER}/32",), proxy_protocol=True)

    async def main() -> None:
        async with backends("a") as (a,), proxy(service(a.address), settings=settings) as s:
            port = s.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            header = v1("10.4.4.4")
            writer.write(header[:9])
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(header[9:] + GET)
            async with asyncio.timeout(DEADLINE):
                first = await read_response(reader)
            writer.close()
            local = V2_SIGNATURE + b"\x20\x00\x00\x00"  # the balancer's own health check
            second = status(await send(port, local + GET))
            assert (first.status, second) == (200, 200)
            assert [r.header("X-Forwarded-For") for r in a.requests] == ["10.4.4.4", BALANCER]

    run(main())


async def read_until_cut(reader: asyncio.StreamReader) -> bytes:
    """What came before the proxy closed; a close with our bytes unread is a reset."""
    try:
        return await reader.read(-1)
    except ConnectionResetError:
        return b""


def test_a_silent_trusted_peer_is_cut_at_header_timeout_and_at_stop() -> None:
    settings = ProxySettings(
        trusted_proxies=(f"{BALANCER}/32",), proxy_protocol=True, header_timeout=0.2
    )

    async def main() -> None:
        async with backends("a") as (a,):
            server = ProxyServer(settings, RoutingTable(services=(service(a.address),)))
            await server.start(["127.0.0.1:0"])
            port = server.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PROXY TCP4 10.1.2.3")  # and nothing more
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(DEADLINE):
                assert await read_until_cut(reader) == b""
            assert 0.15 < loop.time() - started < 1.0
            writer.close()
            # A peer still silent when the proxy stops is let go with it.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.02)
            await server.stop(timeout=1.0)
            async with asyncio.timeout(0.15):
                assert await read_until_cut(reader) == b""
            writer.close()
            assert a.requests == []

    run(main())
