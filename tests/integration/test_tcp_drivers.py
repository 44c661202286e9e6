"""tcp services on HAProxy and nginx (issue 13), each a real process started by
its driver, with the demo echo app (zerodown.demo.echo) as targets in this loop:
balancing per connection, connect health, drain by open connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from harness import reserved_port, run
from nginx_harness import nginx
from tcp_harness import (
    FAST_CONNECT,
    ask,
    echoes,
    free_address,
    guarded,
    hold,
    refused,
    tcp_service,
)
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx.stream import STREAM_MODULE
from zerodown.routing import RoutingTable, ServiceSpec


def haproxy(tmp_path: Path, spec: ServiceSpec) -> HaproxyDataPlane:
    settings = HaproxySettings(state_dir=tmp_path / "state", stop_timeout=2.0)
    return HaproxyDataPlane(settings, RoutingTable(services=(spec,)))


@contextlib.asynccontextmanager
async def started(plane: ManagedDataPlane) -> AsyncIterator[None]:
    await plane.start([f"127.0.0.1:{reserved_port()}"])  # the HTTP listener, unused here
    try:
        yield
    finally:
        await plane.stop(2.0)


async def versions(port: int, count: int) -> Counter[bytes]:
    return Counter([(await ask(port)).split(b" ")[0] for _ in range(count)])


def test_haproxy_balances_connections_round_robin_and_least_conn(tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        async with echoes("a", "b") as targets:
            plane = haproxy(tmp_path, tcp_service(port, *targets))
            async with started(plane):
                assert await versions(port, 6) == {b"a": 3, b"b": 3}
                spec = tcp_service(port, *targets, balance="least_conn")
                await plane.apply(RoutingTable(services=(spec,)))
                first, _, w1 = await hold(port)
                assert await versions(port, 3) == {(b"b" if first == "a" else b"a"): 3}
                w1.close()

    run(main())


def test_haproxy_checks_by_connect_and_drains_by_connection(tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        dead = free_address()
        async with echoes("a") as (a,):
            plane = haproxy(tmp_path, tcp_service(port, a, dead, health=FAST_CONNECT))

            async def dead_is_down() -> bool:
                stats = await plane.stats()
                entry = stats.services["db"].pools["stable"].targets[dead]
                return entry.health == "down"

            async with started(plane):
                await until_async(dead_is_down, "the dead target checked down")
                assert await versions(port, 4) == {b"a": 4}
                _, reader, writer = await hold(port)
                result = await plane.drain("db", a, timeout=0.3)
                assert (result.completed, result.cancelled) == (False, 1)
                assert await reader.read() == b""
                writer.close()

    run(main())


async def until_async(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def test_nginx_balances_connections_in_its_stream_block(tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        async with echoes("a", "b") as targets:
            spec = tcp_service(port, *targets)
            async with nginx(tmp_path / "state", spec) as plane:
                assert await versions(port, 6) == {b"a": 3, b"b": 3}
                spec = tcp_service(port, *targets, balance="least_conn")
                await plane.apply(RoutingTable(services=(spec,)))
                first, _, w1 = await hold(port)
                assert await versions(port, 3) == {(b"b" if first == "a" else b"a"): 3}
                w1.close()
                conf = (tmp_path / "state" / "nginx.conf").read_text()
                assert f"load_module {STREAM_MODULE};" in conf

    run(main())


def test_nginx_checks_by_connect_and_drains_by_connection(tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        dead = free_address()
        async with echoes("a", "b") as (a, b):
            spec = tcp_service(port, a, dead, health=FAST_CONNECT)
            async with nginx(tmp_path / "state", spec) as plane:

                async def dead_is_down() -> bool:
                    stats = await plane.stats()
                    entry = stats.services["db"].pools["stable"].targets[dead]
                    return entry.health == "down"

                await until_async(dead_is_down, "the dead target checked down")
                assert await versions(port, 4) == {b"a": 4}
                _, reader, writer = await hold(port)
                await plane.apply(RoutingTable(services=(tcp_service(port, a, b),)))
                draining = asyncio.create_task(plane.drain("db", a, timeout=5.0))
                await until_async(
                    async_true(
                        lambda: plane.routing().services[0].stable.targets[0].state == "draining"
                    ),
                    "draining",
                )
                assert await versions(port, 3) == {b"b": 3}
                writer.write(b"still\n")
                assert await reader.readline() == b"a still\n"  # the old worker serves it on
                assert not draining.done()
                writer.close()
                result = await draining
                assert result.completed

    run(main())


def state_of(plane: ManagedDataPlane, address: str) -> str:
    return next(t.state for t in plane.routing().services[0].stable.targets if t.address == address)


def async_true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


def test_haproxy_and_nginx_refuse_by_peer_address(tmp_path: Path) -> None:
    async def main() -> None:
        async with echoes("a") as (a,):
            port = reserved_port()
            denied = guarded(tcp_service(port, a), deny=("127.0.0.1/32",))
            plane = haproxy(tmp_path / "haproxy", denied)
            async with started(plane):
                assert await refused(port)
                allowed = guarded(tcp_service(port, a), allow=("127.0.0.0/8",))
                await plane.apply(RoutingTable(services=(allowed,)))
                assert await ask(port) == b"a hi\n"
            port = reserved_port()
            denied = guarded(tcp_service(port, a), allow=("10.0.0.0/8",))
            async with nginx(tmp_path / "nginx", denied) as driven:
                assert await refused(port)
                allowed = guarded(tcp_service(port, a), allow=("127.0.0.0/8",))
                await driven.apply(RoutingTable(services=(allowed,)))
                assert await ask(port) == b"a hi\n"

    run(main())
