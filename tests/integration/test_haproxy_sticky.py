"""Sticky sessions on the HAProxy data plane, against a real haproxy (issue 12).

HAProxy carries `sticky` with its own dynamic cookie; these check what the
driver relies on: a client keeps its server, a forged cookie is rebalanced,
a server added at run time (`add server`) gets a cookie, a draining server
keeps its cookie clients until the drain ends, and a removed one moves them
with a rewritten cookie, never a 5xx.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from harness import Backend, Request, backends, ok, request, reserved_port, run, service, until
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.proxy.sticky import new_key
from zerodown.routing import RoutingTable, StickySpec

STICKY = StickySpec(cookie="zd_route", ttl=90)


def sticky(*addresses: str) -> RoutingTable:
    return RoutingTable(services=(service(*addresses, sticky=STICKY),))


def driver(tmp_path: Path, table: RoutingTable) -> HaproxyDataPlane:
    settings = HaproxySettings(
        state_dir=tmp_path / "state",
        stop_timeout=2.0,
        sticky_key=new_key(),
        trusted_proxies=("127.0.0.1/32",),
    )
    return HaproxyDataPlane(settings, table)


async def get(port: int, cookie: str | None = None, path: str = "/") -> tuple[int, str, str | None]:
    """(status, backend, the zd_route cookie it set or None)."""
    response = await request(port, path=path, headers={"Cookie": cookie} if cookie else {})
    set_cookie = response.header("set-cookie")
    return response.status, response.header("x-backend") or "", set_cookie


def value(set_cookie: str | None) -> str:
    assert set_cookie is not None
    return set_cookie.split(";")[0]


async def bound_to(port: int, name: str) -> str:
    for _ in range(20):
        status, backend, set_cookie = await get(port)
        assert status == 200
        if backend == name:
            return value(set_cookie)
    raise AssertionError(f"no client landed on {name}")


def test_a_client_keeps_its_server_and_an_added_server_gets_a_cookie(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            plane = driver(tmp_path, sticky(a.address, b.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                status, backend, set_cookie = await get(port)
                assert status == 200
                assert set_cookie is not None
                assert "Max-Age=90" in set_cookie
                assert "HttpOnly" in set_cookie
                assert "SameSite=Lax" in set_cookie
                assert "127.0.0.1" not in set_cookie
                seen = Counter([(await get(port, value(set_cookie)))[1:] for _ in range(20)])
                assert seen == {(backend, None): 20}
                tls = await request(port, headers={"X-Forwarded-Proto": "https"})
                assert (tls.header("set-cookie") or "").endswith("; Secure")

                fake = "zd_route=0123456789abcdef"
                forged = Counter([(await get(port, fake))[:2] for _ in range(20)])
                assert forged == {(200, "a"): 10, (200, "b"): 10}

                await plane.apply(sticky(a.address, b.address, c.address))  # add server
                cookie = await bound_to(port, "c")
                seen = Counter([(await get(port, cookie))[1:] for _ in range(20)])
                assert seen == {("c", None): 20}
            finally:
                await plane.stop(2.0)

    run(main())


def holding(name: str, gate: asyncio.Event) -> Backend:
    async def handle(req: Request) -> bytes:
        if req.path == "/slow":
            await gate.wait()
        return ok(name.encode(), headers={"X-Backend": name})

    return Backend(name=name, handler=handle)


def test_a_draining_server_keeps_its_clients_then_they_move(tmp_path: Path) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        a = await holding("a", gate).start()
        try:
            async with backends("b") as (b,):
                plane = driver(tmp_path, sticky(a.address, b.address))
                port = reserved_port()
                await plane.start([f"127.0.0.1:{port}"])
                try:
                    cookie = await bound_to(port, "a")
                    held = asyncio.create_task(
                        request(port, path="/slow", headers={"Cookie": cookie})
                    )
                    await until(lambda: any(r.path == "/slow" for r in a.requests), "slow at a")
                    drain = asyncio.create_task(plane.drain("web", a.address, timeout=4.0))
                    await until(
                        lambda: plane.table.services[0].stable.targets[0].state == "draining",
                        "draining",
                    )
                    await asyncio.sleep(0.1)  # the drain command is sent after the table
                    assert (await get(port))[1] == "b"
                    kept = Counter([(await get(port, cookie))[:2] for _ in range(10)])
                    assert kept == {(200, "a"): 10}

                    gate.set()
                    assert (await held).status == 200
                    result = await asyncio.wait_for(drain, 3.0)
                    assert result.completed
                    await plane.apply(sticky(b.address))
                    status, backend, set_cookie = await get(port, cookie)
                    assert (status, backend) == (200, "b")
                    rewritten = value(set_cookie)
                    assert rewritten != cookie
                    moved = Counter([(await get(port, rewritten))[1:] for _ in range(10)])
                    assert moved == {("b", None): 10}
                finally:
                    await plane.stop(2.0)
        finally:
            await a.stop()

    run(main())


def test_a_long_drain_lets_its_cookie_clients_go_after_half_its_time(tmp_path: Path) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        a = await holding("a", gate).start()
        try:
            async with backends("b") as (b,):
                plane = driver(tmp_path, sticky(a.address, b.address))
                port = reserved_port()
                await plane.start([f"127.0.0.1:{port}"])
                try:
                    cookie = await bound_to(port, "a")
                    slow = {"Cookie": cookie}
                    held = asyncio.create_task(request(port, path="/slow", headers=slow))
                    await until(lambda: any(r.path == "/slow" for r in a.requests), "slow at a")
                    drain = asyncio.create_task(plane.drain("web", a.address, timeout=1.0))
                    await asyncio.sleep(0.2)
                    assert (await get(port, cookie))[:2] == (200, "a")
                    await asyncio.sleep(0.5)  # past half the drain: a is in maint
                    moved = await get(port, cookie)
                    assert moved[:2] == (200, "b")
                    assert moved[2] is not None  # rewritten
                    gate.set()
                    assert (await held).status == 200  # in flight: kept
                    result = await asyncio.wait_for(drain, 2.0)
                    assert result.completed
                finally:
                    await plane.stop(2.0)
        finally:
            await a.stop()

    run(main())
