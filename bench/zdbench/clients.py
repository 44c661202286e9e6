"""The asyncio clients of the extra tests: many idle keep-alive connections,
and one large body streamed each way. The proxy's memory is read through a
callable, so these know nothing of /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from zdbench.model import Idle, Transfer

OPEN_BATCH = 500  # connections opened at once: well under the listen backlog
SERVE_BATCH = 200  # connections served at once: the upstream pool stays small
OPEN_TIMEOUT = 60.0  # seconds to open all idle connections
SERVE_TIMEOUT = 60.0  # seconds to serve one request on each
SETTLE_S = 1.0  # after the last connect, before RSS is read: the proxy accepts the rest
STREAM_TIMEOUT = 300.0  # seconds for one large transfer
CHUNK = 256 * 1024
READ_LIMIT = 1 << 20

T = TypeVar("T")
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def idle_connections(
    port: int, wanted: int, rss_kb: Callable[[], int | None], accepted: Callable[[], int]
) -> Idle:
    """Open `wanted` connections and hold them silent, then serve one request on each.

    `accepted()` counts the connections the proxy holds, so RSS is read only
    once it has accepted them all (or gave up trying).
    """
    base = rss_kb() or 0
    conns: list[Conn] = []
    try:
        conns = await asyncio.wait_for(_open_all(port, wanted), OPEN_TIMEOUT)
        await _until_accepted(accepted, len(conns))
        held = rss_kb() or 0
        served = await asyncio.wait_for(_serve_all(conns), SERVE_TIMEOUT)
        await asyncio.sleep(SETTLE_S)
        return Idle(wanted, len(conns), served, base, held, rss_kb() or 0)
    except (OSError, TimeoutError) as exc:
        return Idle(wanted, len(conns), 0, base, 0, 0, error=f"{type(exc).__name__}: {exc}")
    finally:
        for _, writer in conns:
            writer.transport.abort()


async def download(port: int, size: int, rss_kb: Callable[[], int | None]) -> Transfer:
    """GET /bytes?n=size through the proxy, counting the body as it streams in."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_LIMIT)
        request = f"GET /bytes?n={size} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        try:
            status, received = await asyncio.wait_for(_read_response(reader), STREAM_TIMEOUT)
        finally:
            writer.transport.abort()
        error = None
    except (OSError, TimeoutError, ValueError) as exc:
        status, received, error = None, 0, f"{type(exc).__name__}: {exc}"
    return Transfer(
        "download", size, received, time.monotonic() - start, status, rss_kb(), None, error
    )


async def upload(port: int, size: int, rss_kb: Callable[[], int | None]) -> Transfer:
    """POST a body of `size` bytes; the app echoes it back as it arrives, so both ways stream."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_LIMIT)
        head = (
            f"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode())
        sending = asyncio.create_task(_send_body(writer, size))
        try:
            status, received = await asyncio.wait_for(_read_response(reader), STREAM_TIMEOUT)
            await sending
        finally:
            sending.cancel()
            writer.transport.abort()
        error = None
    except (OSError, TimeoutError, ValueError) as exc:
        status, received, error = None, 0, f"{type(exc).__name__}: {exc}"
    return Transfer(
        "upload", size, received, time.monotonic() - start, status, rss_kb(), None, error
    )


# -- helpers ---------------------------------------------------------------------------


async def _in_batches(items: Sequence[T], batch: int, each: Callable[[T], Awaitable[bool]]) -> int:
    ok = 0
    for i in range(0, len(items), batch):
        results = await asyncio.gather(*(each(x) for x in items[i : i + batch]))
        ok += sum(results)
    return ok


async def _open_all(port: int, wanted: int) -> list[Conn]:
    conns: list[Conn] = []

    async def one(_: int) -> bool:
        conns.append(await asyncio.open_connection("127.0.0.1", port))
        return True

    try:
        await _in_batches(range(wanted), OPEN_BATCH, one)
    except BaseException:
        for _, writer in conns:
            writer.transport.abort()
        raise
    return conns


async def _until_accepted(accepted: Callable[[], int], count: int) -> None:
    deadline = time.monotonic() + OPEN_TIMEOUT
    while accepted() < count and time.monotonic() < deadline:  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE_S)


async def _serve_all(conns: list[Conn]) -> int:
    async def one(conn: Conn) -> bool:
        reader, writer = conn
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
            status, _ = await _read_response(reader)
            return status == 200
        return False

    return await _in_batches(conns, SERVE_BATCH, one)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """(status, body bytes) of one response with a Content-Length, or read to EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    received = 0
    while length is None or received < length:
        want = READ_LIMIT if length is None else min(READ_LIMIT, length - received)
        chunk = await reader.read(want)
        if not chunk:
            break
        received += len(chunk)
    return status, received


async def _send_body(writer: asyncio.StreamWriter, size: int) -> None:
    chunk = memoryview(bytes(range(256)) * (CHUNK // 256))
    left = size
    while left > 0:
        n = min(left, CHUNK)
        writer.write(chunk[:n])
        await writer.drain()
        left -= n
