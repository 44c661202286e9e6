"""Crash supervision of the current release (deploy/supervision.py), with a
fake runtime that crashes instances on demand and a data plane that records
tables: a crash loop slows the restarts down to once a window, shows in
`status` with its crashes and next retry, and ends by itself (event
`crash_loop_ended`, capacity back) once the cause is gone and a restart
stays up for a window. No rollback: the current release stays current.

The back-off is shortened (window WINDOW); each instance answers health
checks from a real socket on port 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from zerodown.config import ServiceConfig, parse_config
from zerodown.dataplane.base import DataPlane
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.release import Instance, Release
from zerodown.routing import DrainResult, RoutingTable
from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import ExitCallback, Runtime
from zerodown.store.sqlite import SqliteStore

WINDOW = 0.4  # seconds: the crash-loop window, so a slow retry comes every WINDOW
DEADLINE = 8.0  # bounds a hang only
CONFIG = """
[services.web]
command = "app --port {port}"
instances = 1
health = { path = "/health", interval = "0.05s", rise = 1 }
stop_grace = "0.1s"
"""
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class CrashingRuntime(Runtime):
    """Instances that answer 200 on a port of their own, until `crash` (or, while
    `broken` is set, right after they start: a database that is down)."""

    def __init__(self) -> None:
        self.broken = False
        self.starts: list[float] = []  # monotonic, one per instance started
        self._servers: dict[str, asyncio.Server] = {}
        self._exit: ExitCallback | None = None

    async def start(self, release: Release, n: int) -> list[Instance]:
        started = []
        for _ in range(n):
            server = await asyncio.start_server(_answer, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            instance = Instance(f"web-{release.version}-{port}", "web", release.version, port)
            self._servers[instance.id] = server
            self.starts.append(time.monotonic())
            if self.broken:
                asyncio.get_running_loop().call_later(0.01, self.crash, instance)
            started.append(instance)
        return started

    def crash(self, instance: Instance) -> None:
        server = self._servers.pop(instance.id, None)
        if server is not None:
            server.close()
            assert self._exit is not None
            self._exit(instance, 1)

    async def stop(self, instance: Instance, grace: float) -> None:
        server = self._servers.pop(instance.id, None)
        if server is not None:
            server.close()

    def instances(self, service: str | None = None) -> list[Instance]:
        return []

    def on_exit(self, callback: ExitCallback) -> None:
        self._exit = callback

    async def adopt(self, instances: list[Instance]) -> list[Instance]:
        return []


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK)
    await writer.drain()
    writer.close()


class RecordingDataPlane(DataPlane):
    def __init__(self) -> None:
        self.tables: list[RoutingTable] = []

    async def apply(self, table: RoutingTable) -> None:
        self.tables.append(table)

    def routing(self) -> RoutingTable:
        return self.tables[-1] if self.tables else RoutingTable()

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        return DrainResult(service, address, True, 0, 0.0)

    async def stats(self) -> dict[str, object]:
        return {"services": {}}

    async def prometheus(self) -> str:
        return ""


def short_backoff() -> Backoff:
    return Backoff(base=0.01, max=0.02, crash_loop_count=3, crash_loop_window=WINDOW)


def kinds(orch: Orchestrator) -> list[str]:
    return [e.kind for e in orch.store.events(0, "web", limit=10_000)]


def targets(dataplane: RecordingDataPlane) -> int:
    return len(dataplane.routing().services[0].stable.targets)


async def until(what: str, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def test_a_crash_loop_retries_once_a_window_and_ends_when_a_restart_stays_up() -> None:
    async def run() -> None:
        runtime, dataplane = CrashingRuntime(), RecordingDataPlane()

        def runtime_for(name: str, service: ServiceConfig) -> Runtime:
            return runtime

        config = parse_config(CONFIG)
        store = SqliteStore(":memory:")
        orch = Orchestrator(config, dataplane, store, runtime_for, backoff=short_backoff)
        await orch.start()
        try:
            view = await orch.wait(await orch.deploy("web", "v1"), DEADLINE)
            assert view is not None and view.outcome == "succeeded", view
            [instance] = orch.fleets["web"].instances

            runtime.broken = True  # the cause: every restart now dies at once
            runtime.crash(instance)
            await until("a crash loop", lambda: orch.status("web")[0].crash_loop is not None)
            loop = orch.status("web")[0].crash_loop
            assert loop is not None and (loop.version, loop.crashes) == ("v1", 3), loop
            assert loop.next_retry == loop.since + WINDOW
            assert targets(dataplane) == 0  # under capacity, and said so
            began = len(runtime.starts)

            # Slowly: the next two retries come a window apart, each one more crash.
            await until("two slow retries", lambda: len(runtime.starts) >= began + 2)
            gap = runtime.starts[began + 1] - runtime.starts[began]
            assert gap >= WINDOW * 0.9, gap
            shown = orch.status("web")[0].crash_loop
            assert shown is not None and shown.crashes >= 4 and shown.next_retry > time.time() - 0.1

            runtime.broken = False  # the cause went away
            await until("crash_loop_ended", lambda: "crash_loop_ended" in kinds(orch))
            status = orch.status("web")[0]
            assert status.crash_loop is None and status.current == "v1"
            assert [(i.version, i.state, i.routed) for i in status.instances] == [
                ("v1", "ready", True)
            ]
            assert targets(dataplane) == 1
            assert kinds(orch).count("crash_loop") == 1  # said once, not per retry
            ended = [e for e in store.events(0, "web", limit=100) if e.kind == "crash_loop_ended"]
            assert json.loads(ended[0].data_json)["version"] == "v1"
            # No rollback outside a deploy: one deploy ever, v1 still current.
            assert [r.status for r in store.releases("web")] == ["current"]
            assert [d.id for d in store.unfinished_deploys()] == []
        finally:
            await orch.close(stop_instances=True)

    asyncio.run(run())


def test_a_restart_that_stays_up_before_a_crash_loop_needs_no_ending() -> None:
    async def run() -> None:
        runtime, dataplane = CrashingRuntime(), RecordingDataPlane()
        orch = Orchestrator(
            parse_config(CONFIG),
            dataplane,
            SqliteStore(":memory:"),
            lambda name, service: runtime,
            backoff=short_backoff,
        )
        await orch.start()
        try:
            view = await orch.wait(await orch.deploy("web", "v1"), DEADLINE)
            assert view is not None and view.outcome == "succeeded", view
            [instance] = orch.fleets["web"].instances
            runtime.crash(instance)

            def replaced() -> bool:
                return targets(dataplane) == 1 and len(runtime.starts) == 2

            await until("a replacement", replaced)
            assert orch.status("web")[0].crash_loop is None
            assert "crash_loop" not in kinds(orch) and "crash_loop_ended" not in kinds(orch)
        finally:
            await orch.close(stop_instances=True)

    asyncio.run(run())
