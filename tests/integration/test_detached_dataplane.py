"""The data-plane host as a real process, driven by DetachedDataPlane.

A controller that goes away leaves the host serving; the next one adopts
it (same process, same table); one with other settings replaces it on the
same sockets; a host that dies is started again by the controller, and
clients that connect meanwhile wait in the accept queue instead of being
refused. Real processes, real sockets; counts, not timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from harness import Backend, backends, request, run, service, until
from zerodown.dataplane.detached import DetachedDataPlane
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable

SETTINGS = ProxySettings(read_timeout=2.0, shutdown_timeout=2.0)


def table(backend: Backend) -> RoutingTable:
    return RoutingTable(services=(service(backend.address),))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.asynccontextmanager
async def host_cleanup(*planes: DetachedDataPlane) -> AsyncIterator[None]:
    """Whatever a test leaves running is stopped (a detached host outlives its test)."""
    try:
        yield
    finally:
        for plane in planes:
            for pid in plane.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


async def get(port: int) -> tuple[int, bytes]:
    response = await request(port)
    return response.status, response.body


def test_a_detached_host_serves_on_and_the_next_controller_adopts_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("b") as (backend,):
            first = DetachedDataPlane(SETTINGS, table(backend), 1, tmp_path)
            second = DetachedDataPlane(SETTINGS, None, 1, tmp_path)
            async with host_cleanup(first, second):
                await first.start(["127.0.0.1:0"])
                host, (address,) = first.pids[0], first.addresses
                port = address[1]
                assert await get(port) == (200, b"b")
                await first.detach()  # as a controller that dies
                assert await get(port) == (200, b"b")
                await second.start([f"127.0.0.1:{port}"])
                assert second.adopted
                assert second.pids == [host]
                assert second.routing() == table(backend)
                assert await get(port) == (200, b"b")
                await second.stop()
                assert not alive(host)
        assert backend.requests
        assert len(backend.requests) == 3

    run(main())


def test_other_settings_replace_the_host_on_the_same_sockets(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("b") as (backend,):
            first = DetachedDataPlane(SETTINGS, table(backend), 1, tmp_path)
            other = ProxySettings(read_timeout=3.0, shutdown_timeout=2.0)
            second = DetachedDataPlane(other, None, 1, tmp_path)
            async with host_cleanup(first, second):
                await first.start(["127.0.0.1:0"])
                old = first.pids[0]
                port = first.addresses[0][1]
                await first.detach()
                # Clients keep coming while the host is replaced: none is refused.
                load = asyncio.gather(*(get(port) for _ in range(40)))
                await second.start([f"127.0.0.1:{port}"])
                answers = await load
                assert not second.adopted
                assert second.pids != [old]
                await until(lambda: not alive(old), "the old host gone", timeout=10)
                assert second.routing() == table(backend)  # the old host's table, carried over
                assert await get(port) == (200, b"b")
                await second.stop()
        assert answers == [(200, b"b")] * 40

    run(main())


def test_a_host_that_dies_is_started_again_on_the_table_in_force(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("b") as (backend,):
            plane = DetachedDataPlane(SETTINGS, None, 1, tmp_path)
            async with host_cleanup(plane):
                await plane.start(["127.0.0.1:0"])
                await plane.apply(table(backend))
                port, dead = plane.addresses[0][1], plane.pids[0]
                os.killpg(dead, signal.SIGKILL)
                # The controller holds the sockets: these wait for the new host.
                answers = await asyncio.gather(*(get(port) for _ in range(20)))
                await until(lambda: plane.pids not in ([], [dead]), "a new host", timeout=10)
                assert await get(port) == (200, b"b")
                await plane.stop()
        assert answers == [(200, b"b")] * 20

    run(main())
