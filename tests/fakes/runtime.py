"""A fake `Runtime`: instances are tiny real listeners, not processes.

The health gate probes an instance over TCP (`deploy/gate.py`), so each
instance listens on 127.0.0.1:0 and answers every request with 200 while it
is healthy, 503 otherwise. Whether it is healthy is the test's to say, per
version or per instance id (`FakeMachine.set_healthy`), at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fakes.changes import Changes
from zerodown.release import Instance, Release
from zerodown.runtime.base import ExitCallback, Runtime

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FakeApp:
    """One instance's "process": a listener answering by `healthy()`."""

    def __init__(self, healthy: Callable[[], bool]) -> None:
        self._healthy = healthy
        self._server: asyncio.Server | None = None
        self.requests = 0  # health probes answered

    def __repr__(self) -> str:
        return f"<FakeApp port={self.port} requests={self.requests}>"

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None, "listen() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The checker resets the connection once it has the status line: any
        # error here is the client leaving, never the test's concern.
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(OK if self._healthy() else UNAVAILABLE)
            await writer.drain()
        writer.close()


@dataclass
class FakeMachine:
    """The host the instances run on: it outlives a daemon (and its runtime),
    as processes do, so a second Orchestrator can adopt what the first started."""

    apps: dict[str, FakeApp] = field(default_factory=dict)  # alive instances, by id
    instances: dict[str, Instance] = field(default_factory=dict)  # alive, by id
    health: dict[str, bool] = field(default_factory=dict)  # by instance id or version
    broken: set[str] = field(default_factory=set)  # versions whose instances die as they start
    serial: int = 0

    def set_healthy(self, key: str, healthy: bool) -> None:
        """Make an instance (by id) or every instance of a version (by version)
        answer its health checks, or not. An id's setting beats its version's."""
        self.health[key] = healthy

    def healthy(self, instance_id: str, version: str) -> bool:
        return self.health.get(instance_id, self.health.get(version, True))

    def alive(self, instance_id: str) -> bool:
        return instance_id in self.apps

    async def kill(self, instance_id: str) -> Instance:
        """End an instance's "process" (no one is told: see FakeRuntime.crash)."""
        app = self.apps.pop(instance_id)
        await app.close()
        return self.instances.pop(instance_id)

    async def shutdown(self) -> None:
        """Close every listener still open (a test's teardown)."""
        for instance_id in list(self.apps):
            await self.kill(instance_id)


class FakeRuntime(Runtime):
    """Starts FakeApps on a FakeMachine and records what it was asked to do."""

    def __init__(self, machine: FakeMachine | None = None) -> None:
        self.machine = machine or FakeMachine()
        self.starts: list[tuple[str, int]] = []  # (version, n) per start call, in order
        self.start_times: list[float] = []  # time.monotonic() of each start call
        self.started: list[Instance] = []
        self.stops: list[str] = []  # instance ids, in the order stop was called
        self.adopted: list[str] = []  # ids adopt() took back
        self.changes = Changes()
        self._callbacks: list[ExitCallback] = []
        self._tasks: set[asyncio.Task[Instance]] = set()  # crashes under way (broken versions)

    def __repr__(self) -> str:
        return f"<FakeRuntime starts={self.starts} stops={len(self.stops)}>"

    def successor(self) -> FakeRuntime:
        """The runtime a restarted daemon gets: same machine, nothing recorded yet."""
        return FakeRuntime(self.machine)

    # -- the Runtime interface ---------------------------------------------------

    async def start(self, release: Release, n: int) -> list[Instance]:
        self.starts.append((release.version, n))
        self.start_times.append(time.monotonic())
        started = [await self._start_one(release) for _ in range(n)]
        self.started += started
        self.changes.notify()
        if release.version in self.machine.broken:
            # As a process that exits on a missing database: after start() returned.
            for instance in started:
                asyncio.get_running_loop().call_soon(self._die, instance.id)
        return started

    async def stop(self, instance: Instance, grace: float) -> None:
        self.stops.append(instance.id)
        if self.machine.alive(instance.id):
            await self.machine.kill(instance.id)
        self.changes.notify()

    def instances(self, service: str | None = None) -> list[Instance]:
        return [i for i in self.machine.instances.values() if service in (None, i.service)]

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    async def adopt(self, instances: list[Instance]) -> list[Instance]:
        adopted = [i for i in instances if self.machine.alive(i.id)]
        for instance in adopted:
            self.machine.instances[instance.id] = instance  # the caller's object from now on
        self.adopted += [i.id for i in adopted]
        self.changes.notify()
        return adopted

    async def close(self) -> None:
        self._callbacks.clear()  # stop watching; the instances run on

    # -- what a test does to instances -------------------------------------------

    async def crash(self, instance_id: str, code: int | None = 1) -> Instance:
        """The instance exits on its own: its listener closes, then the exit is reported."""
        instance = await self.machine.kill(instance_id)
        for callback in list(self._callbacks):
            callback(instance, code)
        self.changes.notify()
        return instance

    def _die(self, instance_id: str) -> None:
        if self.machine.alive(instance_id):
            self._tasks.add(task := asyncio.create_task(self.crash(instance_id)))
            task.add_done_callback(self._tasks.discard)

    def of_version(self, version: str) -> list[Instance]:
        """Alive instances of `version`, in the order they started."""
        return [i for i in self.machine.instances.values() if i.version == version]

    async def _start_one(self, release: Release) -> Instance:
        self.machine.serial += 1
        instance_id = f"{release.service}-{release.version}-{self.machine.serial}"
        app = FakeApp(lambda: self.machine.healthy(instance_id, release.version))
        await app.listen()
        instance = Instance(instance_id, release.service, release.version, app.port)
        self.machine.apps[instance_id] = app
        self.machine.instances[instance_id] = instance
        return instance
