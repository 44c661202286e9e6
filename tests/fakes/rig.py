"""A real `Orchestrator` on an in-memory store, a FakeRuntime and a
RecordingDataPlane, started and closed around a test.

Views are read only through `as_json`: they are dicts today and may become
pydantic models with the same JSON shape; a test that reads them through it
passes either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from fakes.changes import WAIT
from fakes.dataplane import RecordingDataPlane
from fakes.runtime import FakeMachine, FakeRuntime
from zerodown.config import ServiceConfig, parse_config
from zerodown.config.strategy import StrategyName
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import Runtime
from zerodown.store.sqlite import SqliteStore

Json = dict[str, Any]

# What every test service shares: durations of milliseconds, so a deploy
# takes a few; the health gate passes at the first probe of a healthy app.
FAST: dict[str, str] = {
    "command": '"app --port {port} --version {version}"',
    "instances": "2",
    "deploy_timeout": '"2s"',
    "drain_timeout": '"100ms"',
    "stop_grace": '"10ms"',
    "health": '{ path = "/health", interval = "10ms", timeout = "500ms", rise = 1, fall = 1 }',
}


def service_toml(name: str, **keys: str) -> str:
    """The TOML of one service with FAST settings; `keys` (TOML values) add
    to them or replace them, e.g. service_toml("web", strategy='"canary"')."""
    lines = [f"{key} = {value}" for key, value in (FAST | keys).items()]
    return "\n".join([f"[services.{name}]", *lines]) + "\n"


def web(**keys: str) -> str:
    """`service_toml("web", ...)`: the service most tests deploy."""
    return service_toml("web", **keys)


def as_json(view: object) -> Json:
    """A view as the admin API sends it: a model's JSON dump, or the dict itself."""
    dump = getattr(view, "model_dump", None)
    if callable(dump):
        return cast(Json, dump(mode="json"))
    assert isinstance(view, dict), f"not a view: {view!r}"
    return cast(Json, view)


@dataclass
class Rig:
    orch: Orchestrator
    dataplane: RecordingDataPlane
    store: SqliteStore
    machine: FakeMachine
    runtimes: dict[str, FakeRuntime] = field(default_factory=dict)  # by service

    @property
    def runtime(self) -> FakeRuntime:
        """The runtime of the only service (most tests run one)."""
        (runtime,) = self.runtimes.values()
        return runtime

    async def deploy(
        self, version: str, strategy: StrategyName | None = None, service: str = "web"
    ) -> Json:
        """Deploy and wait for the outcome; the DeployView as JSON."""
        deploy_id = await self.orch.deploy(service, version, strategy)
        return await self.outcome(deploy_id)

    async def outcome(self, deploy_id: int, within: float = WAIT) -> Json:
        """The DeployView once the deploy ended; fails the test if it has not `within` seconds."""
        view = as_json(await self.orch.wait(deploy_id, within))
        assert view["outcome"] is not None, f"deploy {deploy_id} still running: {view}"
        return view

    def status(self, service: str = "web") -> Json:
        (view,) = self.orch.status(service)
        return as_json(view)

    def events(self, kind: str, service: str = "web") -> list[Json]:
        """The data of every stored event of `kind`, oldest first, with its deploy_id."""
        return [
            json.loads(e.data_json) | {"deploy_id": e.deploy_id}
            for e in self.store.events(0, service)
            if e.kind == kind
        ]

    def releases(self, service: str = "web") -> dict[str, str]:
        """version -> status, as `zerodown releases` lists them."""
        return {r["version"]: r["status"] for r in map(as_json, self.orch.releases(service))}


@contextlib.asynccontextmanager
async def rig(
    config: str,
    *,
    machine: FakeMachine | None = None,
    store: SqliteStore | None = None,
    dataplane: RecordingDataPlane | None = None,
    backoff: Callable[[], Backoff] = Backoff,
) -> AsyncIterator[Rig]:
    """A started Orchestrator over `config` (TOML), closed (instances left
    running) on the way out. What the caller passes in, the caller owns and
    closes; what is made here is closed here (the machine's listeners too)."""
    own_machine = machine is None
    the_machine = machine or FakeMachine()
    the_store = store or SqliteStore(":memory:")
    runtimes: dict[str, FakeRuntime] = {}

    def runtime_for(name: str, service: ServiceConfig) -> Runtime:
        runtimes[name] = FakeRuntime(the_machine)
        return runtimes[name]

    the_dataplane = dataplane or RecordingDataPlane()
    orch = Orchestrator(
        parse_config(config), the_dataplane, the_store, runtime_for, backoff=backoff
    )
    try:
        await orch.start()
        yield Rig(orch, the_dataplane, the_store, the_machine, runtimes)
    finally:
        await orch.close(stop_instances=False)
        if own_machine:
            await the_machine.shutdown()
        if store is None:
            the_store.close()


async def next_event(
    orch: Orchestrator,
    kind: str,
    where: Callable[[Json], bool] = lambda event: True,
    *,
    after: int = 0,
    service: str = "web",
    within: float = WAIT,
) -> Json:
    """The first event of `kind` after id `after` for which `where` holds,
    waiting for it as it happens (the SSE stream's way)."""
    events = orch.events(after, service)
    try:
        async with asyncio.timeout(within):
            async for view in events:
                event = as_json(view)
                if event["kind"] == kind and where(event):
                    return event
    except TimeoutError:
        pass
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    raise AssertionError(f"no {kind} event within {within:g}s")
