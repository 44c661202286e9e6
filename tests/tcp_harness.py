"""Helpers for tcp service tests (issue 13): the demo echo app as targets in
the test's loop, a tcp ServiceSpec, and clients that say which release
served their connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from zerodown.demo import echo
from zerodown.guardspec import GuardSpec
from zerodown.routing import BalanceName, HealthSpec, PoolSpec, ServiceSpec, Split, TargetSpec

FAST_CONNECT = HealthSpec(path=None, interval=0.05, timeout=0.5, rise=1, fall=1)


def free_address() -> str:
    """An address nothing listens on (bound and closed): a dead target."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def echoes(*versions: str) -> AsyncIterator[list[str]]:
    servers = [await echo.start("127.0.0.1", 0, v) for v in versions]
    try:
        yield [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    finally:
        for server in servers:
            server.close()


def tcp_service(
    listen: int,
    *stable: str,
    canary: tuple[str, ...] = (),
    weight: float = 0.0,
    balance: BalanceName = "round_robin",
    health: HealthSpec | None = None,
) -> ServiceSpec:
    return ServiceSpec(
        name="db",
        mode="tcp",
        listen=f"127.0.0.1:{listen}",
        balance=balance,
        stable=PoolSpec(targets=tuple(TargetSpec(address=a) for a in stable)),
        canary=PoolSpec(targets=tuple(TargetSpec(address=a) for a in canary)),
        split=Split(canary_weight=weight),
        health=health,
    )


async def ask(port: int, line: bytes = b"hi") -> bytes:
    """One connection: a line, a half-close, and all the answer up to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line + b"\n")
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


async def hold(port: int) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """An open connection, and the version that serves it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"who\n")
    answer = await reader.readline()
    return answer.split()[0].decode(), reader, writer


def guarded(
    spec: ServiceSpec, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()
) -> ServiceSpec:
    return spec.model_copy(update={"guard": GuardSpec(allow=allow, deny=deny)})


async def refused(port: int) -> bool:
    """A connection closed or reset before any answer: refused by allow/deny."""
    try:
        return await ask(port) == b""
    except ConnectionError:
        return True
