"""The HAProxy driver's reloads, drain deadline, health of added servers and
failures that explain themselves, against a real haproxy."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from harness import Backend, Request, backends, ok, request, reserved_port, run, service, until
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.runtime import command, parse_servers_state, reply_error
from zerodown.dataplane.haproxy.servers import server_name
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.errors import DataPlaneError
from zerodown.routing import HealthSpec, RoutingTable, ServiceSpec, Split


def driver(tmp_path: Path, *services: ServiceSpec) -> HaproxyDataPlane:
    settings = HaproxySettings(state_dir=tmp_path / "state", stop_timeout=2.0)
    return HaproxyDataPlane(settings, RoutingTable(services=services))


async def served_by(port: int, count: int, path: str = "/") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = await request(port, path=path)
        seen[response.header("x-backend") or str(response.status)] += 1
    return seen


def test_a_new_service_is_a_reload_that_keeps_the_master_and_the_traffic(tmp_path: Path) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(req: Request) -> bytes:
            if req.path == "/slow":
                await release.wait()
            return ok(b"web", headers={"X-Backend": "web"})

        async with backends("api") as (api,):
            web = await Backend(name="web", handler=slow).start()
            plane = driver(tmp_path, service(web.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                master, workers = plane.master, list(plane.workers)
                in_flight = asyncio.create_task(request(port, path="/slow"))
                await until(lambda: len(web.requests) == 1, "slow request at web")
                table = RoutingTable(
                    services=(service(web.address), service(api.address, name="api", path="/api"))
                )
                await plane.apply(table)
                assert plane.master == master
                assert plane.workers != workers  # a new worker took the sockets over
                assert await served_by(port, 2, path="/api/x") == {"api": 2}
                assert await served_by(port, 2, path="/x") == {"web": 2}
                release.set()
                assert (await in_flight).status == 200  # the old worker finished it
            finally:
                await plane.stop(2.0)
                await web.stop()

    run(main())


def test_a_drain_past_its_deadline_cuts_what_is_left_and_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        async def hang(req: Request) -> bytes:
            await asyncio.sleep(5)
            return ok()

        slow = await Backend(name="slow", handler=hang).start()
        plane = driver(tmp_path, service(slow.address))
        port = reserved_port()
        await plane.start([f"127.0.0.1:{port}"])
        try:
            pending = asyncio.create_task(request(port))
            await until(lambda: len(slow.requests) == 1, "request at the backend")
            result = await plane.drain("web", slow.address, timeout=0.3)
            assert not result.completed
            assert result.cancelled == 1
            assert 0.3 <= result.seconds < 2.0
            assert plane.routing().services[0].stable.targets[0].state == "draining"
            response = (
                await pending
            )  # cut: HAProxy answers what it can, the client is not left hanging
            assert response.status == 502  # cut mid-answer: HAProxy says the server failed it
        finally:
            await plane.stop(1.0)
            await slow.stop()

    run(main())


def test_an_added_server_is_health_checked_and_kept_out_while_failing(tmp_path: Path) -> None:
    async def main() -> None:
        async def sick(req: Request) -> bytes:
            return ok(
                b"sick", status=500 if req.path == "/health" else 200, headers={"X-Backend": "sick"}
            )

        async with backends("good") as (good,):
            bad = await Backend(name="sick", handler=sick).start()
            health = HealthSpec(path="/health", interval=0.05, rise=1, fall=1)
            plane = driver(tmp_path, service(good.address, health=health))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                table = RoutingTable(
                    services=(
                        service(
                            good.address,
                            canary=(bad.address,),
                            split=Split(canary_weight=50),
                            health=health,
                        ),
                    )
                )
                await plane.apply(table)
                await until(
                    lambda: sum(r.path == "/health" for r in bad.requests) >= 2,
                    "checks of sick",
                    3.0,
                )
                stats = await plane.stats()
                target = stats.services["web"].pools["canary"].targets[bad.address]
                assert (target.health, target.available) == ("down", False)
                assert await served_by(port, 10) == {"good": 10}
            finally:
                await plane.stop(1.0)
                await bad.stop()

    run(main())


def test_a_missing_binary_names_the_package(tmp_path: Path) -> None:
    settings = HaproxySettings(state_dir=tmp_path, binary="no-such-haproxy")
    plane = HaproxyDataPlane(settings, RoutingTable())
    with pytest.raises(DataPlaneError, match="apt-get install haproxy"):
        run(plane.start(["127.0.0.1:1"]))
    assert not (tmp_path / "haproxy.pid").exists()


def test_what_haproxy_cannot_carry_is_refused_before_anything_runs(tmp_path: Path) -> None:
    plane = driver(tmp_path, ServiceSpec(name="web", balance="least_time"))
    with pytest.raises(DataPlaneError, match="least_time"):
        run(plane.start(["127.0.0.1:1"]))
    assert plane.master is None


def test_a_busy_port_fails_start_with_haproxys_words(tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        plane = driver(tmp_path, ServiceSpec(name="web"))
        try:
            with pytest.raises(DataPlaneError, match="exited at start") as failed:
                await plane.start([f"127.0.0.1:{port}"])
            assert "cannot bind socket" in str(failed.value)
            assert plane.master is None
        finally:
            taken.close()

    run(main())


def test_an_adopting_driver_with_other_listeners_reloads_onto_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("web") as (web,):
            first = driver(tmp_path, service(web.address))
            old_port, new_port = reserved_port(), reserved_port()
            await first.start([f"127.0.0.1:{old_port}"])
            second = driver(tmp_path)
            await second.start([f"127.0.0.1:{new_port}"])
            try:
                assert (second.adopted, second.master) == (True, first.master)
                assert await served_by(new_port, 2) == {"web": 2}
                assert second.addresses == [("127.0.0.1", new_port)]
            finally:
                await second.stop(2.0)

    run(main())


def test_a_refused_runtime_command_puts_the_table_back_and_says_which(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            old = RoutingTable(services=(service(a.address, b.address),))
            plane = driver(tmp_path, *old.services)
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                config = plane.settings.config.read_text()
                # Someone else removes b behind zerodown's back.
                socket = plane.settings.stats_socket
                gone = f"be_web/{server_name(b.address)}"
                for line in (f"set server {gone} state maint", f"del server {gone}"):
                    assert reply_error(line, await command(socket, line)) is None
                new = RoutingTable(
                    services=(
                        service(
                            a.address, b.address, canary=(c.address,), split=Split(canary_weight=50)
                        ),
                    )
                )
                with pytest.raises(DataPlaneError, match=f"refused 'set server {gone} weight 128'"):
                    await plane.apply(new)
                assert plane.routing() == old
                assert plane.settings.config.read_text() == config
                states = parse_servers_state(await command(socket, "show servers state"))
                assert [(row.name, row.weight) for row in states if row.backend == "be_web"] == [
                    (server_name(a.address), 256)
                ]
                assert await served_by(port, 3) == {"a": 3}
            finally:
                await plane.stop(1.0)

    run(main())


def test_a_dead_target_is_retried_on_another_server(tmp_path: Path) -> None:
    async def main() -> None:
        dead = await Backend(name="dead").start()
        await dead.stop()  # its port now refuses connections
        async with backends("live") as (live,):
            plane = driver(tmp_path, service(dead.address, live.address, tries=2))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                assert await served_by(port, 6) == {"live": 6}
                stats = await plane.stats()
                target = stats.services["web"].pools["stable"].targets[dead.address]
                # Each failed connect here went to the other server (redispatch).
                assert target.retries >= 3
                assert sum(target.responses.values()) == 0
            finally:
                await plane.stop(1.0)

    run(main())


def test_a_dropped_target_keeps_its_request_in_flight_and_is_deleted_later(tmp_path: Path) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(req: Request) -> bytes:
            await release.wait()
            return ok(b"old", headers={"X-Backend": "old"})

        async with backends("new") as (new,):
            old = await Backend(name="old", handler=slow).start()
            plane = driver(tmp_path, service(old.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                pending = asyncio.create_task(request(port))
                await until(lambda: len(old.requests) == 1, "request at old")
                await plane.apply(RoutingTable(services=(service(new.address),)))
                assert await served_by(port, 2) == {"new": 2}
                left = await _names(plane)
                assert server_name(old.address) in left  # in maintenance, its request running
                release.set()
                assert (await pending).status == 200
                await plane.apply(plane.routing())  # the next apply sweeps it
                assert await _names(plane) == [server_name(new.address)]
            finally:
                await plane.stop(1.0)
                await old.stop()

    run(main())


async def _names(plane: HaproxyDataPlane) -> list[str]:
    text = await command(plane.settings.stats_socket, "show servers state be_web")
    return [row.name for row in parse_servers_state(text)]


def test_a_dead_haproxy_is_started_again_on_the_table_in_force(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("v1", "v2") as (v1, v2):
            plane = driver(tmp_path, service(v1.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                await plane.apply(RoutingTable(services=(service(v2.address),)))
                dead = plane.master
                assert dead is not None
                os.killpg(dead, signal.SIGKILL)  # the master and its workers: its session
                await until(lambda: not plane.alive(), "haproxy dead")
                await plane.start([f"127.0.0.1:{port}"])
                assert not plane.adopted
                assert plane.master != dead
                assert await served_by(port, 2) == {"v2": 2}
            finally:
                await plane.stop(1.0)

    run(main())
