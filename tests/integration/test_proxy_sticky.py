"""Sticky sessions through real sockets on the embedded proxy (issue 12).

A client that keeps the cookie it was given stays on one backend; a forged
one is ignored; a drain keeps the bound client on its backend until the
drain ends, then moves it with a rewritten cookie and no 5xx; a deploy's new
targets move old cookies without an error.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from harness import (
    Backend,
    Request,
    backends,
    ok,
    port_of,
    proxy,
    request,
    run,
    service,
    until,
)
from zerodown.dataplane.supervisor import MultiWorkerDataPlane
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.sticky import new_key
from zerodown.routing import RoutingTable, StickySpec

STICKY = StickySpec(cookie="zd_route", ttl=90)
SETTINGS = ProxySettings(sticky_key=new_key())


def sticky(*addresses: str) -> RoutingTable:
    return RoutingTable(services=(service(*addresses, sticky=STICKY),))


async def get(port: int, cookie: str | None = None, path: str = "/") -> tuple[int, str, str | None]:
    """(status, backend, the zd_route cookie it set or None)."""
    headers = {"Cookie": cookie} if cookie else {}
    response = await request(port, path=path, headers=headers)
    set_cookie = response.header("set-cookie")
    value = set_cookie.split(";")[0] if set_cookie else None
    return response.status, response.header("x-backend") or "", value


def test_a_client_keeps_its_backend_and_a_forged_cookie_is_ignored() -> None:
    async def main() -> None:
        async with (
            backends("a", "b", "c") as started,
            proxy(*sticky(*(b.address for b in started)).services, settings=SETTINGS) as server,
        ):
            port = port_of(server)
            response = await request(port)
            assert response.status == 200
            first = response.header("set-cookie")
            assert first is not None
            assert first.endswith("; Max-Age=90; Path=/; HttpOnly; SameSite=Lax")
            assert "127.0.0.1" not in first
            cookie = first.split(";")[0]
            seen = Counter([(await get(port, cookie))[1:] for _ in range(30)])
            # One backend, and no cookie to rewrite.
            assert seen == {(response.header("x-backend"), None): 30}

            fake = "zd_route=AAAAAAAAAAAAAAAAAAAAAA"
            forged = Counter([(await get(port, fake))[:2] for _ in range(30)])
            assert forged == {(200, "a"): 10, (200, "b"): 10, (200, "c"): 10}

    run(main())


def holding_at(name: str, gate: asyncio.Event) -> Backend:
    """Answers /slow once `gate` is set, anything else at once."""

    async def handle(req: Request) -> bytes:
        if req.path == "/slow":
            await gate.wait()
        return ok(name.encode(), headers={"X-Backend": name})

    return Backend(name=name, handler=handle)


async def bound_to(port: int, name: str) -> str:
    """A cookie that binds to backend `name` (new clients until one lands there)."""
    for _ in range(20):
        status, backend, cookie = await get(port)
        assert status == 200
        if backend == name:
            assert cookie is not None
            return cookie
    raise AssertionError(f"no client landed on {name}")


def test_a_draining_backend_keeps_its_clients_until_the_drain_ends() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        a = await holding_at("a", gate).start()
        try:
            async with backends("b") as (b,):
                table = sticky(a.address, b.address)
                async with proxy(*table.services, settings=SETTINGS) as server:
                    await drain_and_move(server, a, gate)
        finally:
            await a.stop()

    run(main())


async def drain_and_move(server: ProxyServer, a: Backend, gate: asyncio.Event) -> None:
    port = port_of(server)
    cookie = await bound_to(port, "a")
    held = asyncio.create_task(request(port, path="/slow", headers={"Cookie": cookie}))
    await until(lambda: any(r.path == "/slow" for r in a.requests), "the slow request at a")
    drain = asyncio.create_task(server.drain("web", a.address, timeout=4.0))
    await until(lambda: server.services["web"].stable.targets[0].state == "draining", "drain")
    # Draining: new clients go to b, the bound one still to a, cookie untouched.
    assert (await get(port))[1] == "b"
    assert Counter([await get(port, cookie) for _ in range(10)]) == {(200, "a", None): 10}

    gate.set()
    assert (await held).status == 200
    result = await asyncio.wait_for(drain, 2.0)
    assert result.completed
    assert result.cancelled == 0
    # The drain is over: moved to b, the cookie rewritten once, never a 5xx.
    status, backend, rewritten = await get(port, cookie)
    assert (status, backend) == (200, "b")
    assert rewritten is not None
    assert rewritten != cookie
    assert Counter([await get(port, rewritten) for _ in range(10)]) == {(200, "b", None): 10}


def test_after_a_deploy_an_old_cookie_moves_without_an_error() -> None:
    async def main() -> None:
        async with (
            backends("old1", "old2", "new1", "new2") as (old1, old2, new1, new2),
            proxy(*sticky(old1.address, old2.address).services, settings=SETTINGS) as server,
        ):
            port = port_of(server)
            cookie = await bound_to(port, "old2")
            await server.apply(sticky(new1.address, new2.address))
            status, backend, rewritten = await get(port, cookie)
            assert status == 200
            assert backend in ("new1", "new2")
            assert rewritten is not None
            moved = Counter([await get(port, rewritten) for _ in range(10)])
            assert moved == {(200, backend, None): 10}

    run(main())


def test_a_cookie_set_before_a_restart_holds_after_it_with_the_same_key() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as started:
            table = sticky(*(b.address for b in started))
            async with proxy(*table.services, settings=SETTINGS) as server:
                cookie = await bound_to(port_of(server), "c")
            async with proxy(*table.services, settings=SETTINGS) as server:
                seen = Counter([await get(port_of(server), cookie) for _ in range(10)])
                assert seen == {(200, "c", None): 10}

    run(main())


def test_every_worker_honours_the_cookie_one_of_them_set() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as started:
            # No key in the settings: the supervisor makes one for all its workers.
            plane = MultiWorkerDataPlane(ProxySettings(), sticky(*(b.address for b in started)), 2)
            await plane.start(["127.0.0.1:0"])
            try:
                port = plane.addresses[0][1]
                cookie = await bound_to(port, "b")
                # New connections, spread over both workers by the kernel.
                seen = Counter([await get(port, cookie) for _ in range(30)])
                assert seen == {(200, "b", None): 30}
                assert sum(1 for _ in plane.workers) == 2
            finally:
                await plane.stop(1.0)

    run(main())


def test_a_long_drain_lets_its_cookie_clients_go_after_half_its_time() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        a = await holding_at("a", gate).start()
        try:
            async with backends("b") as (b,):
                table = sticky(a.address, b.address)
                async with proxy(*table.services, settings=SETTINGS) as server:
                    port = port_of(server)
                    cookie = await bound_to(port, "a")
                    slow = {"Cookie": cookie}
                    held = asyncio.create_task(request(port, path="/slow", headers=slow))
                    await until(lambda: any(r.path == "/slow" for r in a.requests), "slow at a")
                    drain = asyncio.create_task(server.drain("web", a.address, timeout=0.6))
                    await asyncio.sleep(0.05)
                    assert (await get(port, cookie))[:2] == (200, "a")
                    await asyncio.sleep(0.3)  # past half the drain
                    status, backend, rewritten = await get(port, cookie)
                    assert (status, backend) == (200, "b")
                    assert rewritten is not None
                    gate.set()
                    assert (await held).status == 200
                    assert (await drain).completed
        finally:
            await a.stop()

    run(main())
