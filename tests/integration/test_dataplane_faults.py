"""Faults in the middle of a deploy step, against real HAProxy and nginx:
the proxy killed mid-apply, and a runtime command HAProxy refuses. The step
fails with a DataPlaneError (or, for nginx, completes on a new master);
nothing is half-applied, and the table in force keeps serving."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from harness import backends, request, reserved_port, run, service, until
from nginx_harness import nginx, port_of
from zerodown.dataplane.haproxy import driver as haproxy_driver
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.runtime import command, parse_servers_state
from zerodown.dataplane.haproxy.servers import server_name
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx import process as nginx_process
from zerodown.errors import DataPlaneError
from zerodown.routing import RoutingTable


def haproxy(tmp_path: Path, table: RoutingTable) -> HaproxyDataPlane:
    return HaproxyDataPlane(HaproxySettings(state_dir=tmp_path / "state", stop_timeout=2.0), table)


async def bodies(port: int, count: int) -> set[bytes]:
    return {(await request(port)).body for _ in range(count)}


def test_haproxy_killed_mid_apply_fails_the_step_and_comes_back_on_the_old_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with backends("v1", "v2") as (v1, v2):
            old = RoutingTable(services=(service(v1.address),))
            plane = haproxy(tmp_path, old)
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            config = plane.settings.config.read_text()
            sent: list[str] = []
            real = command  # the driver's own, patched below

            async def dies_after_the_first_add(socket: Path, line: str) -> str:
                if sent and plane.master is not None:
                    os.killpg(plane.master, signal.SIGKILL)  # master and workers, mid-step
                reply = await real(socket, line)
                if line.startswith("add server"):
                    sent.append(line)
                return reply

            monkeypatch.setattr(haproxy_driver, "command", dies_after_the_first_add)
            try:
                with pytest.raises(DataPlaneError, match="did not answer"):
                    await plane.apply(RoutingTable(services=(service(v2.address),)))
                monkeypatch.setattr(haproxy_driver, "command", real)
                assert sent  # it died between two commands of one step
                assert plane.routing() == old
                assert plane.settings.config.read_text() == config
                dead = plane.master
                await until(lambda: plane.master not in (None, dead), "restarted", timeout=5.0)
                assert await bodies(port, 3) == {b"v1"}
                await plane.apply(RoutingTable(services=(service(v2.address),)))  # and on it goes
                assert await bodies(port, 3) == {b"v2"}
            finally:
                await plane.stop(1.0)

    run(main())


def test_nginx_killed_mid_reload_fails_the_step_and_comes_back_on_the_old_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with (
            backends("v1", "v2") as (v1, v2),
            nginx(tmp_path, service(v1.address), reload_timeout=1.0) as plane,
        ):
            old = plane.routing()
            port = port_of(plane)

            def killed_instead(pid: int, sig: signal.Signals) -> None:
                os.killpg(pid, signal.SIGKILL)  # the master dies as it would reload

            monkeypatch.setattr(nginx_process, "signal_master", killed_instead)
            dead = set(plane.pids)
            with pytest.raises(DataPlaneError, match="did not take configuration"):
                await plane.apply(RoutingTable(services=(service(v2.address),)))
            monkeypatch.undo()
            assert plane.routing() == old
            await until(lambda: bool(plane.pids) and plane.pids[0] not in dead, "restarted", 5.0)
            assert await bodies(port, 3) == {b"v1"}
            await plane.apply(RoutingTable(services=(service(v2.address),)))
            assert await bodies(port, 3) == {b"v2"}

    run(main())


def test_haproxy_refusing_an_add_server_leaves_the_table_and_config_as_they_were(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            old = RoutingTable(services=(service(a.address),))
            plane = haproxy(tmp_path, old)
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                config = plane.settings.config.read_text()
                socket = plane.settings.stats_socket
                # Someone else took the name zerodown gives b's server, for another address.
                taken = f"be_web/{server_name(b.address)}"
                await command(socket, f"add server {taken} 127.0.0.1:9 weight 1")
                # Draining: out of traffic, and not the maintenance a sweep would delete.
                await command(socket, f"set server {taken} state drain")
                with pytest.raises(DataPlaneError, match=f"refused 'add server {taken}"):
                    await plane.apply(RoutingTable(services=(service(a.address, b.address),)))
                assert plane.routing() == old
                assert plane.settings.config.read_text() == config
                rows = parse_servers_state(await command(socket, "show servers state"))
                ready = [r.name for r in rows if r.backend == "be_web" and not (r.maint or r.drain)]
                assert ready == [server_name(a.address)]
                assert await bodies(port, 3) == {b"a"}
            finally:
                await plane.stop(1.0)

    run(main())
