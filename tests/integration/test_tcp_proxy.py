"""tcp services on the embedded data plane, through real sockets (issue 13).

Backends are the demo echo app (zerodown.demo.echo) in this loop: each line
comes back as "<version> <line>", so every connection says where it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from harness import reserved_port, run, until
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
from zerodown.dataplane.detached import DetachedDataPlane
from zerodown.dataplane.supervisor import MultiWorkerDataPlane
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable


@contextlib.asynccontextmanager
async def tcp_proxy() -> AsyncIterator[tuple[ProxyServer, int]]:
    """A proxy with one listener on port 0; the test's table makes it a tcp service's."""
    server = ProxyServer(ProxySettings(connect_timeout=1.0))
    await server.start(["127.0.0.1:0"])
    try:
        yield server, server.addresses[0][1]
    finally:
        await server.stop(timeout=1.0)


def test_round_robin_spreads_connections_and_passes_the_half_close_on() -> None:
    async def main() -> None:
        async with echoes("a", "b") as targets, tcp_proxy() as (server, port):
            await server.apply(RoutingTable(services=(tcp_service(port, *targets),)))
            answers = [await ask(port, f"line{i}".encode()) for i in range(6)]
            assert sorted(answers) == sorted(
                [f"{v} line{i}\n".encode() for i, v in enumerate("ababab")]
            )
            assert Counter(a.split()[0] for a in answers) == {b"a": 3, b"b": 3}
            await until(lambda: server.tcp.pipes == set(), "every pipe closed")

    run(main())


def test_bytes_flow_both_ways_in_bulk() -> None:
    async def main() -> None:
        async with echoes("a") as targets, tcp_proxy() as (server, port):
            await server.apply(RoutingTable(services=(tcp_service(port, *targets),)))
            lines = b"".join(b"%07d\n" % i for i in range(50_000))  # 400 kB: past every buffer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sending = asyncio.create_task(_send_all(writer, lines))
            answer = await reader.read()
            await sending
            assert answer == b"".join(b"a " + line + b"\n" for line in lines.splitlines())

    run(main())


async def _send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    writer.write_eof()


def test_least_conn_sends_a_new_connection_to_the_target_with_fewer_open() -> None:
    async def main() -> None:
        async with echoes("a", "b") as targets, tcp_proxy() as (server, port):
            spec = tcp_service(port, *targets, balance="least_conn")
            await server.apply(RoutingTable(services=(spec,)))
            first, _, w1 = await hold(port)
            second, _, w2 = await hold(port)
            assert {first, second} == {"a", "b"}
            w2.close()
            await until(lambda: len(server.tcp.pipes) == 1, "the second connection closed")
            # The first target still has one open; the other has none.
            assert [(await hold(port))[0] for _ in range(1)] == [second]
            w1.close()

    run(main())


def test_a_target_that_refuses_connections_is_checked_out_and_skipped() -> None:
    async def main() -> None:
        dead = free_address()
        async with echoes("a") as targets, tcp_proxy() as (server, port):
            spec = tcp_service(port, dead, *targets, health=FAST_CONNECT)
            await server.apply(RoutingTable(services=(spec,)))
            down = server.services["db"].targets_by_address()[dead]
            await until(lambda: not down.health.serving, "the dead target checked down")
            live = server.services["db"].targets_by_address()[targets[0]]
            assert live.health.serving  # a connect check passes on a listening port
            answers = [await ask(port) for _ in range(4)]
            assert answers == [b"a hi\n"] * 4

    run(main())


def test_a_connect_error_tries_another_target_before_health_knows() -> None:
    async def main() -> None:
        dead = free_address()
        async with echoes("a") as targets, tcp_proxy() as (server, port):
            await server.apply(RoutingTable(services=(tcp_service(port, dead, *targets),)))
            answers = [await ask(port) for _ in range(4)]
            assert answers == [b"a hi\n"] * 4
            failed = server.services["db"].targets_by_address()[dead]
            assert failed.metrics is not None
            assert failed.metrics.snapshot().failures

    run(main())


def test_a_drain_waits_for_open_connections_and_new_ones_go_elsewhere() -> None:
    async def main() -> None:
        async with echoes("a", "b") as (a, b), tcp_proxy() as (server, port):
            await server.apply(RoutingTable(services=(tcp_service(port, a),)))
            version, reader, writer = await hold(port)
            assert version == "a"
            await server.apply(RoutingTable(services=(tcp_service(port, a, b),)))
            draining = asyncio.create_task(server.drain("db", a, timeout=5.0))
            await until(lambda: server.table.services[0].stable.targets[0].state == "draining", "")
            assert [await ask(port) for _ in range(3)] == [b"b hi\n"] * 3
            assert not draining.done()
            writer.write(b"still here\n")  # the open connection still serves
            assert await reader.readline() == b"a still here\n"
            writer.close()
            result = await draining
            assert (result.completed, result.cancelled) == (True, 0)

    run(main())


def test_a_drain_cuts_what_is_still_open_at_its_timeout() -> None:
    async def main() -> None:
        async with echoes("a") as (a,), tcp_proxy() as (server, port):
            await server.apply(RoutingTable(services=(tcp_service(port, a),)))
            # The writers are kept: a StreamWriter closes its connection when collected.
            held = [await hold(port) for _ in range(2)]
            result = await server.drain("db", a, timeout=0.2)
            assert (result.completed, result.cancelled) == (False, 2)
            for _, reader, _ in held:
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b""
            assert server.services["db"].targets_by_address()[a].in_flight == 0

    run(main())


def test_the_canary_weight_is_a_share_of_connections() -> None:
    async def main() -> None:
        async with echoes("v1", "v2") as (old, new), tcp_proxy() as (server, port):
            spec = tcp_service(port, old, canary=(new,), weight=100.0)
            await server.apply(RoutingTable(services=(spec,)))
            assert {(await ask(port)) for _ in range(5)} == {b"v2 hi\n"}
            spec = tcp_service(port, old, canary=(new,), weight=30.0)
            await server.apply(RoutingTable(services=(spec,)))
            versions = Counter([(await ask(port)).split()[0] for _ in range(200)])
            assert 30 <= versions[b"v2"] <= 90, versions  # 60 expected; p(outside) < 1e-5

    run(main())


def test_an_http_listener_beside_a_tcp_one_still_speaks_http() -> None:
    async def main() -> None:
        async with echoes("a") as targets:
            server = ProxyServer(ProxySettings())
            await server.start(["127.0.0.1:0", "127.0.0.1:0"])
            http_port, tcp_port = (addr[1] for addr in server.addresses)
            try:
                await server.apply(RoutingTable(services=(tcp_service(tcp_port, *targets),)))
                assert await ask(tcp_port) == b"a hi\n"
                answer = await ask(http_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r")
                assert answer.startswith(b"HTTP/1.1 404"), answer
            finally:
                await server.stop(timeout=1.0)

    run(main())


def test_every_worker_of_several_serves_the_tcp_listener_and_drains_it() -> None:
    async def main() -> None:
        async with echoes("a", "b") as (a, b):
            plane = MultiWorkerDataPlane(ProxySettings(), RoutingTable(), 2)
            await plane.start(["127.0.0.1:0", "127.0.0.1:0"])
            try:
                port = plane.addresses[1][1]
                await plane.apply(RoutingTable(services=(tcp_service(port, a, b),)))
                answers = Counter([(await ask(port)).split()[0] for _ in range(20)])
                # Each worker balances on its own: both targets, not an exact split.
                assert set(answers) == {b"a", b"b"}
                version, reader, writer = await hold(port)
                held = a if version == "a" else b
                result = await plane.drain("db", held, timeout=0.3)
                assert (result.completed, result.cancelled) == (False, 1)
                assert await reader.read() == b""
                writer.close()
            finally:
                await plane.stop(1.0)

    run(main())


def test_a_replaced_data_plane_host_keeps_the_tcp_listener_and_open_connections(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        port = reserved_port()
        async with echoes("a") as targets:
            table = RoutingTable(services=(tcp_service(port, *targets),))
            first = DetachedDataPlane(ProxySettings(shutdown_timeout=5.0), table, 1, tmp_path)
            other = ProxySettings(shutdown_timeout=4.0)  # other settings: a new host
            second = DetachedDataPlane(other, None, 1, tmp_path)
            try:
                await first.start(["127.0.0.1:0", f"127.0.0.1:{port}"])
                old = first.pids[0]
                _, reader, writer = await hold(port)
                await first.detach()
                new = asyncio.gather(*(ask(port) for _ in range(20)))
                # The old host is stopped as part of the take-over: it waits
                # for its open connections (up to shutdown_timeout).
                replacing = asyncio.create_task(second.start(["127.0.0.1:0", f"127.0.0.1:{port}"]))
                assert await new == [b"a hi\n"] * 20  # none refused across the hand-over
                writer.write(b"still\n")  # served on by the old host, which waits for it
                assert await reader.readline() == b"a still\n"
                writer.close()
                started = asyncio.get_running_loop().time()
                await replacing
                assert asyncio.get_running_loop().time() - started < 3.0  # not cut at 4 s
                assert second.pids != [old]
                assert await ask(port) == b"a hi\n"
                await second.stop()
            finally:
                for pid in {*first.pids, *second.pids}:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)

    run(main())


def test_allow_and_deny_refuse_a_connection_by_its_peer_address() -> None:
    async def main() -> None:
        async with echoes("a") as (a,), tcp_proxy() as (server, port):
            spec = guarded(tcp_service(port, a), allow=("10.0.0.0/8",))
            await server.apply(RoutingTable(services=(spec,)))
            assert await refused(port)
            spec = guarded(tcp_service(port, a), allow=("127.0.0.0/8",), deny=("127.0.0.1/32",))
            await server.apply(RoutingTable(services=(spec,)))
            assert await refused(port)  # deny wins
            assert server.services["db"].refused.denied == 2
            spec = guarded(tcp_service(port, a), allow=("127.0.0.0/8",))
            await server.apply(RoutingTable(services=(spec,)))
            assert await ask(port) == b"a hi\n"
            metrics = server.services["db"].targets_by_address()[a].metrics
            assert metrics is not None
            assert metrics.requests == 1  # the refused ones never reached it

    run(main())
