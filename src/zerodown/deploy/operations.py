"""What a deploy does to a fleet: start, gate, drain and stop instances, route
(apply the routing table), read the canary's counters, record and emit.

`FleetOps` is all a Deployment (executor.py) may ask of the world around it;
`FleetOperations` implements it over a runtime per service, the data plane,
the store and the event bus. Crash supervision (supervision.py) and warm
releases (warm.py) use the same operations, so there is one way to start or
stop an instance, and the store, the fleet and the events always agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from zerodown.analysis.judge import Sample, pool_samples
from zerodown.config import Config
from zerodown.dataplane.base import DataPlane, DrainResult
from zerodown.dataplane.restarts import through_restarts
from zerodown.deploy.events import EventBus
from zerodown.deploy.fleet import Fleet
from zerodown.deploy.gate import wait_healthy
from zerodown.deploy.warm import WarmReleases
from zerodown.errors import DeployError
from zerodown.release import Instance, Outcome, Release
from zerodown.routing import RoutingTable
from zerodown.runtime.base import Runtime
from zerodown.store.base import Store, StoreError

log = logging.getLogger("zerodown.deploy")


class FleetOps(Protocol):
    """The fleet operations a deploy needs, and nothing else of the orchestrator."""

    async def start_instances(self, fleet: Fleet, release: Release, count: int) -> list[Instance]:
        """Start `count` instances of `release`; they are in the fleet, not yet routed."""

    async def gate(
        self, fleet: Fleet, instances: list[Instance], alive: Callable[[Instance], bool]
    ) -> None:
        """Return once every instance is healthy (then "ready"); raise DeployError if not."""

    async def drain(self, fleet: Fleet, instances: list[Instance]) -> None:
        """Take the instances out of traffic, letting their requests in flight finish."""

    async def stop_instances(self, fleet: Fleet, instances: list[Instance]) -> None: ...

    async def apply(self) -> None:
        """Route: give the data plane the table the fleets describe now."""

    async def samples(self, service: str, *, wait: bool = True) -> tuple[Sample, Sample]:
        """The canary pool's and the stable pool's counters, for the judge.

        `wait=False`: DataPlaneDown at once while the proxy is being started
        again (a canary look is skipped, not held up)."""

    def release(self, service: str, version: str) -> Release:
        """A release on record; DeployError if there is none."""

    def keep_warm(self, fleet: Fleet, version: str, seconds: float) -> None: ...

    def cancel_warm(self, fleet: Fleet, version: str) -> None: ...

    def prune(self, service: str) -> None:
        """Forget old releases beyond `keep_releases` (a succeeded deploy's last act)."""

    def publish(self, service: str, deploy_id: int | None, kind: str, **data: Any) -> None:
        """Emit an event (stored, and pushed to the event stream)."""

    def finish(self, deploy_id: int, outcome: Outcome, reason: str) -> None:
        """Record a deploy's ending, even when the store fails (see FleetOperations)."""


class Background:
    """Tasks that outlive the call that started them, cancelled together at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a task nobody holds may be collected mid-run
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class FleetOperations:
    """FleetOps over the runtimes, the data plane, the store and the event bus."""

    def __init__(
        self,
        config: Config,
        fleets: Mapping[str, Fleet],
        runtimes: Mapping[str, Runtime],
        dataplane: DataPlane,
        store: Store,
        deploying: Callable[[str], bool],
    ) -> None:
        self.config = config
        self.fleets = fleets
        self.runtimes = runtimes
        self.dataplane = dataplane
        self.store = store
        self.bus = EventBus(store)
        self.background = Background()
        self.warm = WarmReleases(self._retire_warm, deploying, self.background.spawn)
        # Outcomes the store could not record (it failed): deploy id -> outcome,
        # reason, finished at. Views show these, so `wait` and the CLI still
        # get the ending.
        self.unrecorded: dict[int, tuple[Outcome, str, float]] = {}

    # -- routing ------------------------------------------------------------------------

    def table(self) -> RoutingTable:
        static = self.config.routing_table()
        services = tuple(
            self.fleets[spec.name].spec() if spec.name in self.fleets else spec
            for spec in static.services
        )
        return RoutingTable(services=services)

    # Every call to the data plane waits out its restart (dataplane/restarts.py):
    # a proxy that died mid-deploy is started again by its watcher, and the
    # step (or the rollback) goes on through the new process.

    async def apply(self) -> None:
        # The table is read at each try: the newest, should the fleet move meanwhile.
        await through_restarts("apply", lambda: self.dataplane.apply(self.table()))

    async def samples(self, service: str, *, wait: bool = True) -> tuple[Sample, Sample]:
        stats = (
            await through_restarts("stats", self.dataplane.stats)
            if wait
            else await self.dataplane.stats()
        )
        return pool_samples(stats, service)

    # -- instances ------------------------------------------------------------------------

    async def start_instances(self, fleet: Fleet, release: Release, count: int) -> list[Instance]:
        started = await self.runtimes[fleet.name].start(release, count)
        # All in the fleet before any is saved: should the store fail, the
        # fleet still knows every process it has to stop.
        fleet.instances.extend(started)
        for instance in started:
            self.store.save_instance(instance)
        ids = [i.id for i in started]
        self.publish(fleet.name, None, "instances_started", version=release.version, ids=ids)
        return started

    async def gate(
        self, fleet: Fleet, instances: list[Instance], alive: Callable[[Instance], bool]
    ) -> None:
        await wait_healthy(
            instances,
            fleet.config.health_spec(),  # a connect check for a tcp service
            fleet.config.deploy_timeout,
            alive,
            self.runtimes[fleet.name],
            warmup=fleet.config.warmup,
        )
        for instance in instances:
            instance.state = "ready"
            self.store.save_instance(instance)

    async def drain(self, fleet: Fleet, instances: list[Instance]) -> None:
        if not instances:
            return
        fleet.start_draining(instances)
        await self.apply()
        timeout = fleet.config.drain_timeout
        routed = [i for i in instances if i.id in fleet.routed]
        results = await asyncio.gather(
            *(self._drain_one(fleet.name, i.address, timeout) for i in routed)
        )
        fleet.unroute(instances)
        await self.apply()
        cut = sum(r.cancelled for r in results)
        self.publish(fleet.name, None, "drained", ids=[i.id for i in instances], cancelled=cut)

    async def _drain_one(self, service: str, address: str, timeout: float) -> DrainResult:
        # A drain asked again after a restart starts over: the new process
        # has its own connections to the target, none of the old's.
        return await through_restarts(
            f"drain {address}", lambda: self.dataplane.drain(service, address, timeout)
        )

    async def _retire_warm(self, fleet: Fleet, instances: list[Instance]) -> None:
        """A blue-green warm release's window ended: stop it, then prune, as
        the deploy that left it warm could not (running releases are kept)."""
        await self.stop_instances(fleet, instances)
        self.prune(fleet.name)

    async def stop_instances(self, fleet: Fleet, instances: list[Instance]) -> None:
        if not instances:
            return
        grace = fleet.config.stop_grace
        for instance in instances:
            instance.state = "stopped"  # before the signal: its exit is expected, not a crash
        await asyncio.gather(*(self.runtimes[fleet.name].stop(i, grace) for i in instances))
        for instance in instances:
            self.forget(fleet, instance)
        self.publish(fleet.name, None, "instances_stopped", ids=[i.id for i in instances])

    def forget(self, fleet: Fleet, instance: Instance) -> None:
        """Out of the fleet and the store (it stopped or crashed)."""
        fleet.forget(instance)
        # A record left of a stopped process is harmless: the next start
        # finds it dead and drops it.
        self.unless_store_fails("forget an instance", self.store.remove_instance, instance.id)

    # -- releases -------------------------------------------------------------------------

    def release(self, service: str, version: str) -> Release:
        release = self.store.release(service, version)
        if release is None:
            raise DeployError(f"{service} has no release {version} on record")
        return release

    def prune(self, service: str) -> None:
        fleet = self.fleets[service]
        protect = {v for v in (self.store.current(service), self.store.previous(service)) if v}
        protect |= {i.version for i in fleet.instances}
        self.store.prune(service, fleet.config.keep_releases, protect)

    def keep_warm(self, fleet: Fleet, version: str, seconds: float) -> None:
        self.warm.keep(fleet, version, seconds)

    def cancel_warm(self, fleet: Fleet, version: str) -> None:
        self.warm.cancel(fleet, version)

    # -- recording --------------------------------------------------------------------------

    def publish(self, service: str, deploy_id: int | None, kind: str, **data: Any) -> None:
        self.bus.publish(service, deploy_id, kind, **data)

    def finish(self, deploy_id: int, outcome: Outcome, reason: str) -> None:
        """Close a deploy in the store or, when the store fails, in memory, so
        that its ending still reaches `wait`, `status` and the CLI."""
        try:
            self.store.finish_deploy(deploy_id, outcome, reason)
        except StoreError as exc:
            log.error(
                "deploy %s ended %s, but the store could not record it: %s", deploy_id, outcome, exc
            )
            self.unrecorded[deploy_id] = (outcome, reason, time.time())

    def unless_store_fails(self, what: str, write: Callable[..., object], *args: Any) -> None:
        """A write whose failure must not stop what calls it (bookkeeping, not
        state a deploy depends on): logged, then forgotten."""
        try:
            write(*args)
        except StoreError as exc:
            log.error("could not %s in the state store: %s", what, exc)
