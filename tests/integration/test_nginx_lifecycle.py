"""A real nginx through deploy steps: reloads under load, a drain, health checks
run by the driver, a driver that goes away and one that adopts, stats."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

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
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings, logfile
from zerodown.dataplane.nginx.process import alive, group
from zerodown.dataplane.nginx.settings import NginxLogTransport
from zerodown.routing import HealthSpec, RoutingTable

FAST_CHECKS = HealthSpec(path="/health", interval=0.05, timeout=0.5, rise=1, fall=1)


def test_reloads_under_continuous_load_fail_no_request(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), nginx(tmp_path, service(a.address)) as plane:
            statuses: list[int] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    statuses.append((await request(port_of(plane))).status)

            clients = [asyncio.create_task(client()) for _ in range(8)]
            for round_ in range(10):
                target = (a, b)[round_ % 2]
                await plane.apply(RoutingTable(services=(service(target.address),)))
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(*clients)
        assert len(statuses) > 100
        assert set(statuses) == {200}
        assert a.requests
        assert b.requests

    run(main())


def test_a_drain_lets_an_in_flight_slow_request_finish(tmp_path: Path) -> None:
    async def slow(req: Request) -> bytes:
        await asyncio.sleep(0.5)
        return ok(b"slow")

    async def main() -> None:
        async with backends("b") as (b,):
            a = await Backend(name="a", handler=slow).start()
            async with nginx(tmp_path, service(a.address, b.address)) as plane:
                port = port_of(plane)
                in_flight = asyncio.create_task(request(port, path="/slow"))
                await until(lambda: len(a.requests) == 1, "the slow request reached a")
                result = await plane.drain("web", a.address, timeout=5.0)
                assert (await in_flight).body == b"slow"
                assert result.completed
                assert result.seconds >= 0.3  # it waited for the request, not just the reload
                after = [(await request(port)).body for _ in range(6)]
                state = plane.routing().service("web")
            await a.stop()
        assert after == [b"b"] * 6
        assert state is not None
        assert [t.state for t in state.stable.targets] == ["draining", "ready"]

    run(main())


def test_a_dead_backend_is_taken_out_by_checks_and_comes_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            spec = service(a.address, b.address, health=FAST_CHECKS)
            async with nginx(tmp_path, spec) as plane:
                port = port_of(plane)
                await a.stop()
                await until(lambda: bool(plane.out_by_health), "a taken out")
                assert plane.out_by_health == {("web", a.address)}
                assert f"server {a.address} down;" in plane.paths.conf.read_text()
                served_while_down = a.requests.copy()
                bodies = [(await request(port)).body for _ in range(6)]
                stats = await plane.stats()
                assert stats.services["web"].pools["stable"].targets[a.address].health == "down"
                await a.restart()
                await until(lambda: not plane.out_by_health, "a back in")
                back = [(await request(port)).body for _ in range(6)]
        assert bodies == [b"b"] * 6
        assert len(a.requests) > len(served_while_down)
        assert back.count(b"a") == 3

    run(main())


def test_every_target_down_routes_to_all_anyway(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,):
            spec = service(a.address, health=FAST_CHECKS.model_copy(update={"path": "/nope"}))

            async def refuse_checks(req: Request) -> bytes:
                return ok(status=500) if req.path == "/nope" else ok(b"a")

            a.handler = refuse_checks
            async with nginx(tmp_path, spec) as plane:
                await until(lambda: len(a.requests) >= 3, "checks ran")
                stats = await plane.stats()
                assert stats.services["web"].pools["stable"].targets[a.address].health == "down"
                await until(lambda: plane.out_by_health != frozenset(), "re-rendered")
                assert (await request(port_of(plane))).body == b"a"  # panic: all in
                for _ in range(100):  # the log line comes as a datagram
                    stats = await plane.stats()
                    if stats.services["web"].panic:
                        break
                    await asyncio.sleep(0.01)
                assert stats.services["web"].panic == 1
                assert stats.services["web"].pools["stable"].targets[a.address].panic == 1

    run(main())


def test_nginx_outlives_its_driver_and_a_new_one_adopts_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            table = RoutingTable(services=(service(a.address),))
            first = NginxDataPlane(NginxSettings(state_dir=tmp_path, request_stats="always"))
            listen = f"127.0.0.1:{reserved_port()}"
            await first.start([listen])
            await first.apply(table)
            master, generation = first.pids[0], first._generation
            await first.detach()
            del first
            port = int(listen.rpartition(":")[2])
            assert (await request(port)).body == b"a"  # nobody drives it; it serves
            second = NginxDataPlane(NginxSettings(state_dir=tmp_path, request_stats="always"))
            await second.start([listen])
            try:
                assert second.pids[0] == master  # adopted, not started again
                assert second._generation == generation  # nor reloaded: same log port
                assert second.routing() == table
                await second.apply(RoutingTable(services=(service(b.address),)))
                assert (await request(port)).body == b"b"
            finally:
                await second.stop(timeout=2.0)
            assert not alive(master)

    run(main())


@pytest.mark.parametrize("transport", ["file", "udp", "unix"])
def test_stats_count_requests_per_target_from_the_access_log(
    tmp_path: Path, transport: NginxLogTransport
) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            spec = service(a.address, b.address, host="example.test")
            async with (
                nginx(tmp_path, spec, log_transport=transport) as plane,
                KeepAliveClient(port_of(plane)) as held,
            ):
                for _ in range(10):
                    await held.request()
                await request(port_of(plane), host="unknown.test", path="/")
                # A line is sent after its response: wait for all of them.
                await until(lambda: plane._counters.lines == 11, "11 log lines", timeout=5.0)
                stats = await plane.stats()
                text = await plane.prometheus()
        pool = stats.services["web"].pools["stable"]
        assert pool.totals.requests == 10
        assert pool.targets[a.address].requests == 5
        assert pool.targets[b.address].responses["2xx"] == 5
        assert pool.totals.latency.count == 10
        assert pool.totals.latency.buckets["+Inf"] == 10
        assert stats.connections == 1  # the one held open, not the probe
        assert stats.rejected == {"404": 1}  # no route for unknown.test: nginx answered
        assert f'target="{a.address}"' in text

    run(main())


def test_a_killed_nginx_is_started_again_with_the_live_table(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,), nginx(tmp_path, service(a.address)) as plane:
            dead = plane.pids
            for pid in dead:
                os.kill(pid, signal.SIGKILL)
            await until(lambda: not any(alive(p) for p in dead), "nginx killed")
            await until(lambda: bool(plane.pids) and plane.pids[0] not in dead, "restarted")
            assert (await request(port_of(plane))).body == b"a"

    run(main())


RESTARTED_WITHIN = 5.0  # a watch interval, the orphans' quit, nginx's start


def test_a_master_killed_alone_is_started_again_and_its_workers_quit(tmp_path: Path) -> None:
    # kill -9 of the master only: its workers serve on and hold the port,
    # until the driver tells them to quit and starts a master that can bind.
    async def main() -> None:
        async with backends("a", "b") as (a, b), nginx(tmp_path, service(a.address)) as plane:
            await plane.apply(RoutingTable(services=(service(b.address),)))
            master, workers = plane.pids[0], set(plane.pids[1:])
            assert group(master) == {master, *workers}  # the daemonized master leads its group
            os.kill(master, signal.SIGKILL)
            await until(lambda: not alive(master), "master killed")
            assert (await request(port_of(plane))).body == b"b"  # the orphans serve on
            restarted = lambda: bool(plane.pids) and plane.pids[0] != master  # noqa: E731
            await until(restarted, "a new master", RESTARTED_WITHIN)
            await until(lambda: not group(master), "the orphaned workers gone", RESTARTED_WITHIN)
            assert (await request(port_of(plane))).body == b"b"  # the table in force
            new = plane.pids[0]
        assert not group(new)  # stopped: nothing of either master's left in /proc

    run(main())


def test_a_driver_that_finds_a_dead_masters_workers_starts_nginx_anyway(tmp_path: Path) -> None:
    # zerodown away (detached) while the master is killed alone: the next
    # driver finds no master to adopt, and workers holding the port.
    async def main() -> None:
        async with backends("a") as (a,):
            table = RoutingTable(services=(service(a.address),))
            first = NginxDataPlane(
                NginxSettings(state_dir=tmp_path, reload_timeout=5.0, request_stats="always")
            )
            listen = f"127.0.0.1:{reserved_port()}"
            await first.start([listen])
            await first.apply(table)
            master = first.pids[0]
            await first.detach()
            os.kill(master, signal.SIGKILL)
            await until(lambda: not alive(master), "master killed")
            second = NginxDataPlane(
                NginxSettings(state_dir=tmp_path, reload_timeout=5.0, request_stats="always"), table
            )
            await second.start([listen])  # a start, not an adoption: on the table it is given
            try:
                assert second.pids[0] != master
                assert (await request(int(listen.rpartition(":")[2]))).body == b"a"
                await until(lambda: not group(master), "the orphaned workers gone")
            finally:
                await second.stop(timeout=2.0)

    run(main())


def test_targets_back_from_a_total_outage_serve_at_once(tmp_path: Path) -> None:
    # nginx alone answers 502 for fail_timeout (10s) once max_fails marked
    # every server failed; the panic backups route to them again.
    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            nginx(tmp_path, service(a.address, b.address)) as plane,
        ):
            await a.stop()
            await b.stop()
            failed = [(await request(port_of(plane))).status for _ in range(6)]
            for backend in (a, b):
                backend._server = await asyncio.start_server(
                    backend._serve, "127.0.0.1", backend.port
                )
            back = [(await request(port_of(plane))).status for _ in range(4)]
        assert failed == [502] * 6
        assert back == [200] * 4

    run(main())


def counted(plane: NginxDataPlane, lines: int) -> Callable[[], bool]:
    return lambda: plane._counters.lines == lines


def rotated(plane: NginxDataPlane, times: int) -> Callable[[], bool]:
    return lambda: plane._log_file.rotations >= times


def test_the_access_log_file_is_rotated_without_losing_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logfile, "ROTATE_BYTES", 2000)  # about 35 lines
    monkeypatch.setattr(logfile, "OLD_GRACE", 0.2)

    async def main() -> None:
        async with (
            backends("a") as (a,),
            nginx(tmp_path, service(a.address)) as plane,
            KeepAliveClient(port_of(plane)) as held,
        ):
            for batch, sent in enumerate((40, 80, 120), start=1):
                for _ in range(40):
                    await held.request()
                await until(counted(plane, sent), f"{sent} lines", 5.0)
                # Each batch passes ROTATE_BYTES; the next rotation waits for the
                # old file to be quiet for OLD_GRACE, so wait for it too, else a
                # slow machine sends the next batch into a file not yet rotated.
                await until(rotated(plane, batch), f"rotation {batch}", 5.0)
            stats = await plane.stats()
        assert stats.services["web"].pools["stable"].targets[a.address].requests == 120
        assert plane._counters.foreign == 0
        # A second rotation needs lines in the file made at the first: nginx reopened.
        assert plane._log_file.rotations >= 3
        assert plane.paths.access_log.with_name("access.log.1").stat().st_size < 2 * 2000
        assert plane.paths.access_log.stat().st_mode & 0o777 == 0o600

    run(main())
