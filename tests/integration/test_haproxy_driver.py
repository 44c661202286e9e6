"""The HAProxy driver against a real haproxy, started by the driver on a
reserved port under tmp_path, with harness backends behind it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness import (
    DEADLINE,
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
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.errors import DataPlaneError
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, Split, TargetSpec


def driver(tmp_path: Path, *services: ServiceSpec) -> HaproxyDataPlane:
    # Every request's latency logged ("canary" has tests of its own: test_request_stats).
    settings = HaproxySettings(
        state_dir=tmp_path / "state", stop_timeout=2.0, request_stats="always"
    )
    return HaproxyDataPlane(settings, RoutingTable(services=services))


async def served_by(
    port: int, count: int, path: str = "/", host: str = "example.test"
) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = await request(port, path=path, host=host)
        seen[response.header("x-backend") or str(response.status)] += 1
    return seen


def test_routes_by_host_and_path(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("web", "api", "admin") as (web, api, admin):
            plane = driver(
                tmp_path,
                service(web.address, name="web"),
                service(api.address, name="api", path="/api", strip_prefix=True),
                service(admin.address, name="admin", host="admin.test"),
            )
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                assert await served_by(port, 2, path="/x") == {"web": 2}
                assert await served_by(port, 2, path="/api/v1") == {"api": 2}
                assert await served_by(port, 1, path="/apix") == {"web": 1}
                assert await served_by(port, 2, path="/", host="admin.test:8080") == {"admin": 2}
                assert [r.path for r in api.requests] == ["/v1", "/v1"]
                spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Request-ID": "mine"}
                response = await request(port, path="/", headers=spoofed)
                rid = response.header("x-request-id")
                assert rid
                assert rid != "mine"  # not from a trusted proxy: replaced
                sent = web.requests[-1]
                assert (sent.all("x-request-id"), sent.all("x-forwarded-for")) == (
                    [rid],
                    ["127.0.0.1"],
                )
                assert sent.header("x-forwarded-proto") == "http"
            finally:
                await plane.stop(2.0)

    run(main())


def test_canary_weight_splits_and_added_server_needs_no_reload(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("stable", "canary") as (stable, canary):
            plane = driver(tmp_path, service(stable.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                pids = plane.pids
                table = RoutingTable(
                    services=(
                        service(
                            stable.address, canary=(canary.address,), split=Split(canary_weight=20)
                        ),
                    )
                )
                await plane.apply(table)
                assert plane.pids == pids  # added by `add server`: same master, same worker
                seen = await served_by(port, 200)
                assert seen["stable"] + seen["canary"] == 200
                assert 25 <= seen["canary"] <= 55, seen  # 20% of 200 = 40
                stats = await plane.stats()
                pools = stats.services["web"].pools
                assert pools["canary"].totals.requests == seen["canary"]
                assert pools["stable"].targets[stable.address].requests == seen["stable"]
                assert pools["canary"].targets[canary.address].responses["2xx"] == seen["canary"]
                metrics = await plane.prometheus()
                counted = [
                    line
                    for line in metrics.splitlines()
                    if line.startswith("zerodown_requests_total") and canary.address in line
                ]
                assert len(counted) == 1
                assert counted[0].endswith(f" {float(seen['canary'])}"), counted
            finally:
                await plane.stop(2.0)

    run(main())


def test_servers_added_at_runtime_keep_idle_connections_for_reuse(tmp_path: Path) -> None:
    """A runtime `add server` gets no idle pool by default: a client whose
    requests take turns between two servers cost each a connection a request."""

    async def main() -> None:
        async with backends("old", "a", "b") as (old, a, b):
            plane = driver(tmp_path, service(old.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                await plane.apply(RoutingTable(services=(service(a.address, b.address),)))
                async with KeepAliveClient(port) as client:
                    answered = [await client.request() for _ in range(40)]
                by = Counter(r.header("x-backend") for r in answered)
                assert by == {"a": 20, "b": 20}
                # One connection each, two at most if a check's timing makes a second.
                assert max(a.connections, b.connections) <= 2, (a.connections, b.connections)
            finally:
                await plane.stop(2.0)

    run(main())


def test_drain_lets_a_slow_request_finish_and_sends_no_new_ones(tmp_path: Path) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(req: Request) -> bytes:
            if req.path == "/slow":
                await release.wait()
            return ok(b"a", headers={"X-Backend": "a"})

        async with backends("b") as (b,):
            a = await Backend(name="a", handler=slow).start()
            plane = driver(tmp_path, service(a.address, b.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                # Round robin: make sure the slow one lands on a.
                slow_request = None
                for _ in range(4):
                    task = asyncio.create_task(request(port, path="/slow"))
                    await asyncio.sleep(0.05)
                    if not release.is_set() and any(r.path == "/slow" for r in a.requests):
                        slow_request = task
                        break
                    await task
                assert slow_request is not None
                drain = asyncio.create_task(plane.drain("web", a.address, timeout=5.0))
                await until(
                    lambda: plane.routing().services[0].stable.targets[0].state == "draining",
                    "drain set",
                )
                before = len(a.requests)
                assert await served_by(port, 6) == {"b": 6}
                assert len(a.requests) == before
                assert not drain.done()
                release.set()
                assert (await slow_request).status == 200
                result = await drain
                assert result.completed
                assert result.cancelled == 0
            finally:
                await plane.stop(2.0)
                await a.stop()

    run(main())


def test_rejected_config_fails_apply_and_old_config_serves(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("web") as (web,):
            plane = driver(tmp_path, service(web.address))
            port = reserved_port()
            await plane.start([f"127.0.0.1:{port}"])
            try:
                before = plane.settings.config.read_text()
                # A new service is a reload; a health path with a space is a config HAProxy rejects.
                bad = RoutingTable(
                    services=(
                        service(web.address),
                        ServiceSpec(name="x", path="/x", health=None,
                                    stable=PoolSpec(targets=(TargetSpec(address="127.0.0.1:1"),)),
                                    hash_key="header:a b", balance="hash"),
                    )
                )  # fmt: skip
                with pytest.raises(DataPlaneError, match="rejected"):
                    await plane.apply(bad)
                assert plane.settings.config.read_text() == before
                assert plane.routing().service("x") is None
                assert await served_by(port, 2, path="/x") == {"web": 2}
            finally:
                await plane.stop(2.0)

    run(main())


def test_a_new_driver_adopts_the_running_haproxy(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("web", "next") as (web, nxt):
            first = driver(tmp_path, service(web.address))
            port = reserved_port()
            await first.start([f"127.0.0.1:{port}"])
            master = first.master
            assert master is not None
            del first  # the controller goes away; haproxy does not
            assert await served_by(port, 2) == {"web": 2}
            second = driver(tmp_path)
            await second.start([f"127.0.0.1:{port}"])
            try:
                assert second.adopted
                assert second.master == master
                assert second.routing().services[0].stable.targets[0].address == web.address
                await second.apply(RoutingTable(services=(service(nxt.address),)))
                assert await served_by(port, 2) == {"next": 2}
            finally:
                await second.stop(2.0)
            await until(lambda: not _alive(master), "haproxy stopped")

    run(main())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


SRC = Path(__file__).resolve().parents[2] / "src"  # this tree's zerodown, for the child
CONTROLLER = """
import asyncio, sys, time
from pathlib import Path
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

state_dir, port, target = sys.argv[1], sys.argv[2], sys.argv[3]
table = RoutingTable(services=(
    ServiceSpec(name="web", health=None, stable=PoolSpec(targets=(TargetSpec(address=target),))),
))
plane = HaproxyDataPlane(HaproxySettings(state_dir=Path(state_dir)), table)
asyncio.run(plane.start([f"127.0.0.1:{port}"]))
print(plane.master, flush=True)
time.sleep(60)
"""


def test_haproxy_outlives_a_killed_controller_and_is_adopted(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("web") as (web,):
            port = reserved_port()
            controller = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CONTROLLER, str(tmp_path / "state"), str(port), web.address,
                stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(SRC)},
            )  # fmt: skip
            assert controller.stdout is not None
            master = int(await asyncio.wait_for(controller.stdout.readline(), DEADLINE))
            controller.kill()  # kill -9 of the controller mid-life
            await controller.wait()
            assert await served_by(port, 3) == {"web": 3}
            plane = driver(tmp_path)
            await plane.start([f"127.0.0.1:{port}"])
            try:
                assert (plane.adopted, plane.master) == (True, master)
                assert await served_by(port, 2) == {"web": 2}
            finally:
                await plane.stop(2.0)

    run(main())


def test_stats_have_a_latency_histogram_from_haproxys_log_kept_across_adoption(
    tmp_path: Path,
) -> None:
    async def answer(req: Request) -> bytes:
        if req.path == "/slow":
            await asyncio.sleep(0.06)
        return ok(b"web")

    async def logged(plane: HaproxyDataPlane, count: int) -> dict[str, int]:
        async def count_of() -> int:  # from the log's histogram, not show stat's count
            stats = await plane.stats()
            return stats.services["web"].pools["stable"].totals.latency.buckets.get("+Inf", 0)

        deadline = asyncio.get_running_loop().time() + DEADLINE
        while await count_of() < count:
            assert asyncio.get_running_loop().time() < deadline, "log lines did not arrive"
            await asyncio.sleep(0.02)
        stats = await plane.stats()
        return stats.services["web"].pools["stable"].totals.latency.buckets

    async def main() -> None:
        web = await Backend(name="web", handler=answer).start()
        first = driver(tmp_path, service(web.address))
        port = reserved_port()
        await first.start([f"127.0.0.1:{port}"])
        second = driver(tmp_path)
        try:
            for path in ["/"] * 8 + ["/slow"] * 2:
                assert (await request(port, path=path)).status == 200
            buckets = await logged(first, 10)
            assert buckets["0.05"] == 8
            assert buckets["0.25"] == buckets["+Inf"] == 10
            workers = list(first.workers)
            await first.detach()
            await second.start([f"127.0.0.1:{port}"])
            assert second.adopted
            assert second.workers == workers  # the same log socket: no reload
            for _ in range(3):
                assert (await request(port)).status == 200
            # HAProxy's ring reconnects within about 1 s and sends what it kept meanwhile.
            assert (await logged(second, 3))["+Inf"] == 3
        finally:
            await second.stop(2.0)
            await web.stop()

    run(main())
