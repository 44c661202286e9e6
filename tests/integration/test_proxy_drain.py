"""Draining through real sockets (issue 2, point 6).

A draining target gets no new requests, finishes what it has, loses its idle
upstream connections, and `drain(service, address, timeout)` says whether
it emptied in time or how many requests it had to cut (504 to a client that
had nothing yet). Backends hold requests on an Event the test releases, so
"in flight" is a fact, not a race.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from harness import (
    DEADLINE,
    Action,
    Backend,
    Request,
    backends,
    ok,
    parse_responses,
    port_of,
    proxy,
    request,
    run,
    service,
    until,
)
from zerodown.errors import DataPlaneError
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.target import Target
from zerodown.routing import RoutingTable


def record_loop_errors() -> list[dict[str, Any]]:
    """Collect what the running loop would log as unhandled (e.g. a Future's
    exception nobody retrieved) instead of printing it."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    return errors


def target(server: ProxyServer, backend: Backend) -> Target:
    return server.services["web"].targets_by_address()[backend.address]


def open_connections(backend: Backend) -> int:
    """Connections the backend has open now (the harness forgets one when it closes)."""
    return len(backend._writers)


def holding(name: str, gate: asyncio.Event, partial: bytes = b"") -> Backend:
    """Answers once `gate` is set; with `partial`, sends those bytes first, then holds."""

    async def handle(req: Request) -> bytes | Action:
        if partial:
            return Action(partial=partial, hang=True)
        await gate.wait()
        return ok(name.encode(), headers={"X-Backend": name})

    return Backend(name=name, handler=handle)


def test_drain_lets_in_flight_requests_finish_and_sends_new_ones_elsewhere() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        old = await holding("old", gate).start()
        try:
            async with backends("new") as (new,), proxy(service(old.address)) as server:
                port = port_of(server)
                held = [asyncio.create_task(request(port, path=f"/slow/{i}")) for i in range(2)]
                await until(lambda: len(old.requests) == 2, "both requests at old")
                assert target(server, old).in_flight == 2

                await server.apply(RoutingTable(services=(service(old.address, new.address),)))
                drain = asyncio.create_task(server.drain("web", old.address, timeout=5.0))
                await until(lambda: target(server, old).state == "draining", "old draining")

                fresh = [await request(port, path=f"/new/{i}") for i in range(10)]
                assert [(r.status, r.body) for r in fresh] == [(200, b"new")] * 10
                assert len(old.requests) == 2
                assert not drain.done()  # two requests still in flight

                gate.set()
                responses = await asyncio.gather(*held)
                assert [(r.status, r.body) for r in responses] == [(200, b"old")] * 2
                result = await drain
                assert (result.service, result.address) == ("web", old.address)
                assert (result.completed, result.cancelled) == (True, 0)
                assert target(server, old).in_flight == 0
                # Its connections were not put back to idle: the backend sees them close.
                await until(lambda: open_connections(old) == 0, "old's connections closed")
                assert routing_state(server, old) == "draining"
        finally:
            await old.stop()

    run(main())


def routing_state(server: ProxyServer, backend: Backend) -> str:
    spec = server.routing().service("web")
    assert spec is not None
    return next(t.state for t in spec.stable.targets if t.address == backend.address)


def test_drain_of_an_idle_target_completes_at_once_and_closes_its_idle_connections() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), proxy(service(a.address, b.address)) as server:
            port = port_of(server)
            for _ in range(6):
                assert (await request(port)).status == 200
            # Upstream keep-alive: one idle pooled connection to each backend.
            await until(lambda: open_connections(a) == open_connections(b) == 1, "idle conns")
            assert a.connections == 1

            result = await server.drain("web", a.address, timeout=5.0)
            assert (result.completed, result.cancelled) == (True, 0)
            await until(lambda: open_connections(a) == 0, "a's idle connection closed")
            assert open_connections(b) == 1
            bodies = {(await request(port)).body for _ in range(6)}
            assert bodies == {b"b"}
            assert len(a.requests) == 3

    run(main())


def test_drain_past_its_deadline_cuts_the_request_with_504_and_counts_it() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        slow = await holding("slow", gate).start()
        errors = record_loop_errors()
        try:
            async with (
                backends("other") as (other,),
                proxy(service(slow.address, other.address)) as server,
            ):
                port = port_of(server)
                held = asyncio.create_task(request(port, path="/forever"))
                await until(lambda: len(slow.requests) == 1, "request at slow")

                result = await server.drain("web", slow.address, timeout=0.1)
                assert (result.completed, result.cancelled) == (False, 1)
                response = await held
                assert response.status == 504
                assert response.header("x-request-id")
                # Cut by the drain, not retried elsewhere.
                assert other.requests == []
                assert target(server, slow).in_flight == 0
                entry = server.stats().services["web"].pools["stable"].targets
                assert entry[slow.address].failures["cancelled"] == 1
                # The cut upstream connection is closed, not pooled for reuse.
                pool = target(server, slow).connections
                assert pool is not None
                await until(lambda: not pool.busy and not pool.idle, "slow's pool empty")
                # Cutting a request is routine: nothing may surface as an unhandled
                # error (a waiter's exception nobody retrieved logs one per cut).
                gc.collect()
                assert [e["message"] for e in errors] == []
        finally:
            gate.set()
            await slow.stop()

    run(main())


def test_drain_past_its_deadline_with_a_response_under_way_cuts_the_client() -> None:
    async def main() -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        slow = await holding("slow", asyncio.Event(), partial=head + b"x" * 10).start()
        try:
            async with proxy(service(slow.address)) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
                writer.write(b"GET /download HTTP/1.1\r\nHost: example.test\r\n\r\n")
                await until(lambda: len(slow.requests) == 1, "request at slow")
                result = await server.drain("web", slow.address, timeout=0.1)
                assert (result.completed, result.cancelled) == (False, 1)
                data = b""
                try:
                    async with asyncio.timeout(DEADLINE):
                        while chunk := await reader.read(65536):
                            data += chunk
                except ConnectionError:
                    pass
                writer.close()
        finally:
            await slow.stop()
        # A 504 cannot follow a 200 head: the client sees the body cut short.
        (response,) = parse_responses(data)
        assert response.status == 200
        assert response.body == b"x" * 10
        assert b"HTTP/1.1 504" not in data  # no second head (an X-Request-ID may hold "504")

    run(main())


def test_drain_of_an_unknown_target_is_an_error() -> None:
    async def main() -> None:
        async with backends("a") as (a,), proxy(service(a.address)) as server:
            with pytest.raises(DataPlaneError):
                await server.drain("web", "127.0.0.1:1", timeout=1.0)
            with pytest.raises(DataPlaneError):
                await server.drain("nope", a.address, timeout=1.0)
            assert (await request(port_of(server))).status == 200

    run(main())


def test_a_drained_target_can_be_put_back_to_ready() -> None:
    # A rollback calls the drain off: draining -> ready is a legal move.
    async def main() -> None:
        async with backends("a", "b") as (a, b), proxy(service(a.address, b.address)) as server:
            port = port_of(server)
            await server.drain("web", a.address, timeout=1.0)
            assert {(await request(port)).body for _ in range(4)} == {b"b"}
            await server.apply(RoutingTable(services=(service(a.address, b.address),)))
            bodies = [(await request(port)).body for _ in range(10)]
            assert bodies.count(b"a") == 5
            assert bodies.count(b"b") == 5

    run(main())


def test_drain_past_its_deadline_also_cuts_requests_still_waiting_for_a_connection() -> None:
    # With max_conns_per_target=1 the second request waits for the first one's
    # slot. At the deadline both are "left": both get 504, both are counted, and
    # the waiting one must not reach the draining target once the slot frees.
    async def main() -> None:
        gate = asyncio.Event()
        slow = await holding("slow", gate).start()
        settings = ProxySettings(max_conns_per_target=1, queue_timeout=5.0)
        try:
            async with proxy(service(slow.address), settings=settings) as server:
                port = port_of(server)
                held = [asyncio.create_task(request(port, path=f"/q{i}")) for i in range(2)]
                await until(
                    lambda: target(server, slow).in_flight == 2 and len(slow.requests) == 1,
                    "one request at slow, one waiting for its connection slot",
                )

                result = await server.drain("web", slow.address, timeout=0.1)
                assert (result.completed, result.cancelled) == (False, 2)
                async with asyncio.timeout(2):
                    responses = await asyncio.gather(*held)
                assert [r.status for r in responses] == [504, 504]
                assert len(slow.requests) == 1
                assert target(server, slow).in_flight == 0
        finally:
            gate.set()
            await slow.stop()

    run(main())
