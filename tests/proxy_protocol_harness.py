"""Clients of a proxy that expects PROXY protocol headers: a trusted balancer
(127.0.0.1) and a stranger (127.0.0.2, loopback too on Linux)."""

from __future__ import annotations

import asyncio
import ssl
import struct

from harness import DEADLINE, Response, parse_responses, read_response
from zerodown.proxy.proxy_protocol import V2_SIGNATURE

BALANCER = "127.0.0.1"
STRANGER = "127.0.0.2"
GET = b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"


def v1(client: str) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 40000 80\r\n".encode()


def v2(client: str) -> bytes:
    addresses = bytes(map(int, client.split("."))) + bytes([127, 0, 0, 1])
    return V2_SIGNATURE + b"\x21\x11\x00\x0c" + addresses + struct.pack("!HH", 40000, 443)


async def send(port: int, data: bytes, source: str = BALANCER) -> bytes:
    """Send `data` from `source`; everything the proxy answers until it closes
    (a refusal closes with the request unread: a reset, nothing answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(data)
    try:
        async with asyncio.timeout(DEADLINE):
            return await reader.read(-1)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def status(raw: bytes) -> int | None:
    responses = parse_responses(raw)
    return responses[0].status if responses else None


async def tls_get(port: int, header: bytes, context: ssl.SSLContext) -> Response:
    """GET over TLS from the balancer, `header` sent before the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(DEADLINE):
            writer.write(header)
            await writer.drain()
            await writer.start_tls(context, server_hostname="example.test")
            writer.write(GET)
            return await read_response(reader)
    finally:
        writer.close()
