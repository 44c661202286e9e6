"""upstreams = "lua" on a real nginx: deploy steps load a table into the
workers and never reload, so keep-alive clients lose nothing; a drain waits
for the requests in flight that the workers report; health, passive
failures, every balancer, a restart and an adoption route by the table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import (
    Backend,
    KeepAliveClient,
    Request,
    backends,
    ok,
    request,
    reserved_port,
    run,
    service,
    until,
)
from nginx_harness import nginx, port_of
from zerodown.cachespec import CacheSpec
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings, process
from zerodown.errors import DataPlaneError
from zerodown.routing import (
    BalanceName,
    HealthSpec,
    PassiveHealthSpec,
    PoolSpec,
    RoutingTable,
    ServiceSpec,
    Split,
    TargetSpec,
    with_target_state,
)

FAST_CHECKS = HealthSpec(path="/health", interval=0.05, timeout=0.5, rise=1, fall=1)


def lua(
    state_dir: Path, *services: ServiceSpec, **settings: Any
) -> contextlib.AbstractAsyncContextManager[NginxDataPlane]:
    """nginx_harness.nginx with the Lua balancer, two workers unless told."""
    settings.setdefault("workers", 2)
    return nginx(state_dir, *services, upstreams="lua", **settings)


def serving(plane: NginxDataPlane) -> set[int]:
    """The workers taking requests (a reload's old ones may still be quitting)."""
    return process.serving_workers(plane.pids[0])


def workers_and_generation(plane: NginxDataPlane) -> tuple[set[int], int]:
    return serving(plane), plane._generation


def test_deploy_steps_load_a_table_and_never_reload(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c), lua(tmp_path, service(a.address)) as plane:
            before = workers_and_generation(plane)
            conf = plane.paths.conf.read_text()
            port = port_of(plane)
            steps = [
                service(a.address, b.address),  # a new instance
                service(a.address, b.address, canary=(c.address,), split=Split(canary_weight=50)),
                service(b.address, canary=(c.address,), split=Split(canary_weight=50)),
                service(c.address),  # switched
            ]
            seen = []
            for spec in steps:
                await plane.apply(RoutingTable(services=(spec,)))
                async with KeepAliveClient(port) as client:
                    seen.append(Counter([(await client.request()).body for _ in range(40)]))
            after = workers_and_generation(plane)
            assert plane.paths.conf.read_text() == conf
            # No target left takes traffic: that is nginx's own 503, a new text.
            await plane.apply(with_target_state(plane.routing(), "web", c.address, "draining"))
            nothing = await request(port)
        assert after == before  # the same workers, no new configuration
        assert seen[0] == {b"a": 20, b"b": 20}
        assert seen[1][b"c"] == 20
        assert seen[1][b"a"] + seen[1][b"b"] == 20
        assert seen[2] == {b"b": 20, b"c": 20}
        assert seen[3] == {b"c": 40}
        assert nothing.status == 503

    run(main())


def test_keep_alive_clients_lose_no_request_while_tables_change(tmp_path: Path) -> None:
    """What reloads cannot promise: every reload closes the old workers'
    idle keep-alive client connections, under requests sent on them."""

    async def main() -> None:
        async with backends("a", "b") as (a, b), lua(tmp_path, service(a.address)) as plane:
            before = workers_and_generation(plane)
            answers: list[int] = []
            errors: list[BaseException] = []
            stop = asyncio.Event()

            async def client() -> None:
                async with KeepAliveClient(port_of(plane)) as conn:
                    while not stop.is_set():
                        try:
                            answers.append((await conn.request()).status)
                        except (OSError, asyncio.IncompleteReadError) as error:
                            errors.append(error)
                            return

            clients = [asyncio.create_task(client()) for _ in range(8)]
            for round_ in range(30):
                spec = service((a, b)[round_ % 2].address, (b, a)[round_ % 2].address)
                weighted = spec.model_copy(
                    update={"split": Split(canary_weight=0)}
                )  # the same targets, another order: a new table each time
                await plane.apply(RoutingTable(services=(weighted,)))
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*clients)
            after = workers_and_generation(plane)
        assert errors == []
        assert len(answers) > 200
        assert set(answers) == {200}
        assert after == before

    run(main())


def test_a_drain_waits_for_the_request_in_flight_the_workers_report(tmp_path: Path) -> None:
    async def slow(req: Request) -> bytes:
        await asyncio.sleep(0.6)
        return ok(b"slow")

    async def main() -> None:
        async with backends("b", "c") as (b, c):
            a = await Backend(name="a", handler=slow).start()
            async with lua(tmp_path, service(a.address, b.address, c.address)) as plane:
                before = workers_and_generation(plane)
                port = port_of(plane)
                in_flight = asyncio.create_task(request(port, path="/slow"))
                await until(lambda: len(a.requests) == 1, "the slow request reached a")
                result = await plane.drain("web", a.address, timeout=5.0)
                assert in_flight.done()  # the drain ended after the request, not before
                assert (await in_flight).body == b"slow"
                quick = await plane.drain("web", b.address, timeout=5.0)
                after = workers_and_generation(plane)
            await a.stop()
        assert result.completed
        assert result.seconds >= 0.4
        assert quick.completed
        assert quick.seconds < 0.5
        assert after == before

    run(main())


def test_a_drain_past_its_timeout_says_it_did_not_complete(tmp_path: Path) -> None:
    async def stuck(req: Request) -> bytes:
        await asyncio.sleep(2.0)
        return ok(b"late")

    async def main() -> None:
        a = await Backend(name="a", handler=stuck).start()
        async with lua(tmp_path, service(a.address)) as plane:
            in_flight = asyncio.create_task(request(port_of(plane), path="/stuck"))
            await until(lambda: len(a.requests) == 1, "the request reached a")
            result = await plane.drain("web", a.address, timeout=0.3)
            assert (await in_flight).body == b"late"  # a drain cuts nothing itself
        await a.stop()
        assert not result.completed

    run(main())


def test_health_verdicts_change_the_table_and_all_out_routes_to_all(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            spec = service(a.address, b.address, health=FAST_CHECKS)
            async with lua(tmp_path, spec) as plane:
                before = workers_and_generation(plane)
                port = port_of(plane)
                await a.stop()
                await until(lambda: bool(plane.out_by_health), "a taken out")
                out = [(await request(port)).body for _ in range(6)]
                conf = plane.paths.upstreams.read_text()
                await a.restart()
                await until(lambda: not plane.out_by_health, "a back")
                back = Counter([(await request(port)).body for _ in range(6)])
                after = workers_and_generation(plane)
        assert out == [b"b"] * 6
        assert a.address.split(":")[1] not in conf  # out of the table, not the config
        assert back == {b"a": 3, b"b": 3}
        assert after == before

    run(main())


def test_every_target_out_by_health_routes_to_all_anyway(tmp_path: Path) -> None:
    """A busy app is not a dead app: checks that fail everywhere route to all."""

    async def slow_health(req: Request) -> bytes:
        if req.path == "/health":
            await asyncio.sleep(2.0)  # past the check's timeout: "down"
        return ok(b"busy")

    async def main() -> None:
        a = await Backend(name="a", handler=slow_health).start()
        b = await Backend(name="b", handler=slow_health).start()
        checks = HealthSpec(path="/health", interval=0.05, timeout=0.1, rise=1, fall=1)
        async with lua(tmp_path, service(a.address, b.address, health=checks)) as plane:
            await until(lambda: len(plane.out_by_health) == 2, "both out by checks")
            statuses = [(await request(port_of(plane))).status for _ in range(6)]
        await a.stop()
        await b.stop()
        assert statuses == [200] * 6

    run(main())


def test_a_dead_target_is_retried_elsewhere_then_passed_over(tmp_path: Path) -> None:
    async def main() -> None:
        dead = f"127.0.0.1:{reserved_port()}"  # nothing listens there
        passive = PassiveHealthSpec(consecutive_errors=2, base_ejection_time=30.0)
        async with backends("b") as (b,):
            spec = service(dead, b.address, passive=passive)
            async with lua(tmp_path, spec, workers=1) as plane:
                port = port_of(plane)
                statuses = [(await request(port)).status for _ in range(20)]
                log = plane.paths.error_log.read_text()
        assert statuses == [200] * 20  # every refused connect retried on b
        # Two failed connects put it out for 30s: no third try in 20 requests.
        assert log.count("Connection refused") == 2, log

    run(main())


@pytest.mark.parametrize(
    "balance", ["round_robin", "least_conn", "random_two", "ip_hash", "hash", "least_time"]
)
def test_every_balancer_routes_by_the_table(tmp_path: Path, balance: BalanceName) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            spec = service(a.address, b.address, balance=balance, hash_key="header:X-User")
            async with lua(tmp_path, spec, workers=1) as plane:
                port = port_of(plane)
                spread = Counter(
                    [(await request(port, headers={"X-User": f"u{i}"})).body for i in range(40)]
                )
                same = {(await request(port, headers={"X-User": "alice"})).body for _ in range(8)}
        if balance in ("ip_hash",):
            assert len(spread) == 1  # one client address: one target
        else:
            assert set(spread) == {b"a", b"b"}, spread
        if balance in ("ip_hash", "hash"):
            assert len(same) == 1  # the same key, the same target

    run(main())


def test_a_malformed_table_is_refused_and_the_last_one_routes(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,), lua(tmp_path, service(a.address)) as plane:
            with pytest.raises(DataPlaneError, match="refused the upstreams table: malformed line"):
                await process.load_table(
                    plane.paths, "zerodown-upstreams 1\ngeneration 1\npeer web 1.2.3.4 x 1\n", 1.0
                )
            with pytest.raises(DataPlaneError, match="not a zerodown upstreams table"):
                await process.load_table(plane.paths, "hello\n", 1.0)
            assert (await request(port_of(plane))).body == b"a"

    run(main())


def test_a_killed_nginx_starts_again_routing_by_the_last_table(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), lua(tmp_path, service(a.address)) as plane:
            await plane.apply(RoutingTable(services=(service(b.address),)))  # a table, no reload
            dead = plane.pids
            for pid in dead:
                with contextlib.suppress(ProcessLookupError):  # a reload's old worker, gone
                    os.kill(pid, signal.SIGKILL)
            await until(lambda: bool(plane.pids) and plane.pids[0] not in dead, "restarted")
            await until(lambda: plane.paths.control_socket.exists(), "serving")
            bodies = {(await request(port_of(plane))).body for _ in range(4)}
        assert bodies == {b"b"}

    run(main())


def test_nginx_outlives_its_driver_and_a_new_one_loads_tables_into_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            settings = NginxSettings(
                state_dir=tmp_path, upstreams="lua", reload_timeout=5.0, request_stats="always"
            )
            first = NginxDataPlane(settings)
            await first.start([f"127.0.0.1:{reserved_port()}"])
            await first.apply(RoutingTable(services=(service(a.address),)))
            listen, pids = [f"127.0.0.1:{port_of(first)}"], serving(first)
            await first.detach()
            assert (await request(port_of(first))).body == b"a"  # nobody drives it: it serves
            second = NginxDataPlane(settings)
            await second.start(listen)
            try:
                assert second.adopted
                assert serving(second) == pids
                await second.apply(RoutingTable(services=(service(b.address),)))
                assert serving(second) == pids  # a table: no reload, no new workers
                assert (await request(port_of(second))).body == b"b"
            finally:
                await second.stop(timeout=2.0)

    run(main())


def test_without_the_lua_module_start_names_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zerodown.dataplane.nginx import upstreams

    monkeypatch.setattr(upstreams, "RESTY_CORE", tmp_path / "no" / "core.lua")
    plane = NginxDataPlane(NginxSettings(state_dir=tmp_path, upstreams="lua"))
    with pytest.raises(DataPlaneError, match="install libnginx-mod-http-lua lua-resty-core"):
        run(plane.start([f"127.0.0.1:{reserved_port()}"]))
    assert not os.path.exists(tmp_path / "nginx.pid")


def test_a_table_the_workers_do_not_take_fails_the_step_and_the_last_one_serves(
    tmp_path: Path,
) -> None:
    """Workers that answer nothing (stopped): the step fails within the
    reload timeout, naming it; the file nginx would start from is the last
    table again; once they run, they route by that one."""

    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            lua(tmp_path, service(a.address), reload_timeout=1.0) as plane,
        ):
            live = plane.paths.upstreams.read_text()
            workers = serving(plane)
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(DataPlaneError, match=r"did not answer on .* within 1\.5s"):
                    await plane.apply(RoutingTable(services=(service(b.address),)))
            finally:
                for pid in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            assert plane.paths.upstreams.read_text() == live
            assert plane.routing().services[0].stable.targets[0].address == a.address
            # The resumed workers read the late POST, and refuse it: expired.
            await asyncio.sleep(0.2)
            bodies = {(await request(port_of(plane))).body for _ in range(4)}
        assert bodies == {b"a"}

    run(main())


def test_a_cached_service_s_steps_within_a_release_are_tables_too(tmp_path: Path) -> None:
    """A cache runs nginx's cache manager and loader beside the workers:
    they route nothing, report no table, and a load waits for none of them.
    (A step that changes the releases taking traffic changes the cache key
    in the text, cachespec.generation_tag: that one reloads.)"""

    def release(*addresses: str) -> ServiceSpec:
        targets = tuple(TargetSpec(address=a, version="v1") for a in addresses)
        return service(cache=CacheSpec()).model_copy(update={"stable": PoolSpec(targets=targets)})

    async def main() -> None:
        async with backends("a", "b") as (a, b), lua(tmp_path, release(a.address)) as plane:
            helpers = set(plane.pids[1:]) - process.serving_workers(plane.pids[0])
            before = workers_and_generation(plane)
            await plane.apply(RoutingTable(services=(release(a.address, b.address),)))
            await plane.drain("web", a.address, timeout=5.0)
            after = workers_and_generation(plane)
            bodies = {(await request(port_of(plane), path=f"/fresh{i}")).body for i in range(4)}
        assert helpers  # the cache manager (and loader) are there
        assert after == before
        assert bodies == {b"b"}

    run(main())


def test_auto_takes_the_lua_balancer_only_from_a_binary_that_loads_it(tmp_path: Path) -> None:
    assert process.lua_works("nginx")  # make test installs the module for this nginx
    assert not process.lua_works(str(tmp_path / "no-nginx"))
    fake = tmp_path / "nginx"
    fake.write_text("#!/bin/sh\necho 'nginx: module is not binary compatible' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert not process.lua_works(str(fake))
