"""The control plane: deploys, rollbacks and recovery of every service that
zerodown runs (those with a `command`); the ControlPlane the admin API calls.

It decides; the data plane obeys the RoutingTable the fleets describe; the
runtime starts and stops processes. This module owns what outlives one
deploy: the fleets, the lock, the store, and recovery after the daemon
itself was killed. The rest is in rooms of its own:

- executor.py: one Deployment, a plan's steps run against `FleetOps`;
- operations.py: FleetOps, what is done to instances (start, gate, drain, stop, route);
- supervision.py: crashes of the current release outside deploys, crash loops;
- warm.py: a blue-green release kept warm after the switch, then retired;
- views.py: the JSON views of contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable

from zerodown.config import Config
from zerodown.config.service import ServiceConfig
from zerodown.config.strategy import StrategyName
from zerodown.dataplane.base import DataPlane
from zerodown.deploy.contract import DeployView, EventView, PauseView, ReleaseView, StatusView
from zerodown.deploy.executor import Deployment, step_json
from zerodown.deploy.fleet import Fleet
from zerodown.deploy.gate import alive
from zerodown.deploy.operations import FleetOperations
from zerodown.deploy.plan import Pause, Plan
from zerodown.deploy.strategies import Situation, plan, warm_rollback
from zerodown.deploy.supervision import Supervisor
from zerodown.deploy.views import deploy_view, pause_view, release_view, status_view
from zerodown.errors import DeployBusy, DeployError, NotDeployable, UnknownRelease, UnknownService
from zerodown.release import Instance, Outcome, Release
from zerodown.routing import RoutingTable
from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import Runtime
from zerodown.store.base import DeployRecord, Store, local_owner

log = logging.getLogger("zerodown.deploy")

HEARTBEAT_EVERY = 10.0  # seconds between lock heartbeats while a deploy runs

RuntimeFactory = Callable[[str, ServiceConfig], Runtime]


class Orchestrator:
    def __init__(
        self,
        config: Config,
        dataplane: DataPlane,
        store: Store,
        runtime_for: RuntimeFactory,
        *,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        """`backoff` makes the crash back-off of each service (tests shorten it)."""
        self.config = config
        self.dataplane = dataplane
        self.store = store
        self.owner = local_owner()
        self.fleets: dict[str, Fleet] = {}
        self.runtimes: dict[str, Runtime] = {}
        self.deployments: dict[str, Deployment] = {}
        self.ops = FleetOperations(
            config, self.fleets, self.runtimes, dataplane, store, self.deployments.__contains__
        )
        self.bus = self.ops.bus
        self.supervisor = Supervisor(self.ops, self.deployments.get, backoff)
        for name, service in config.services.items():
            if service.command is None:
                continue  # fixed upstreams: a plain proxy, nothing to run
            self.fleets[name] = Fleet(
                name, service, maintenance_html=_maintenance(service), carries=dataplane.carries
            )
            runtime = runtime_for(name, service)
            runtime.on_exit(self.supervisor.on_exit)
            self.runtimes[name] = runtime
        self._finished: dict[int, asyncio.Future[None]] = {}

    def __repr__(self) -> str:
        return f"<Orchestrator services={list(self.fleets)} deploying={list(self.deployments)}>"

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Take back what a previous daemon left running, then serve the current releases."""
        interrupted = self.store.unfinished_deploys()
        strays = [(fleet, await self._recover(fleet)) for fleet in self.fleets.values()]
        await self.apply()
        # Only now does the current release serve again, as their endings say.
        for record in interrupted:
            self._end_interrupted(record)
        # A half-done deploy's instances may still carry requests: the data
        # plane served on while no daemon ran. Out of the table now (draining),
        # they finish those before they stop, off the start-up path.
        for fleet, instances in strays:
            if instances:
                self.ops.background.spawn(self._retire_strays(fleet, instances))

    async def _retire_strays(self, fleet: Fleet, instances: list[Instance]) -> None:
        await self.ops.drain(fleet, instances)
        await self.ops.stop_instances(fleet, instances)

    def _end_interrupted(self, record: DeployRecord) -> None:
        """Close a deploy the daemon died in, and say so in `zerodown releases`."""
        if record.version == self.store.current(record.service):
            # It died after the switch was recorded: the new release serves.
            outcome: Outcome = "succeeded"
            reason = "the daemon stopped after this release became current; it serves"
        else:
            outcome = "rolled_back"
            reason = "the daemon stopped during this deploy; the current release was restored"
            self.store.mark_outcome(record.service, record.version, "rolled_back")
        self.store.finish_deploy(record.id, outcome, reason)
        self.bus.publish(record.service, record.id, "finished", outcome=outcome, reason=reason)

    async def close(self, *, stop_instances: bool) -> None:
        """Stop deploying; with stop_instances, stop every instance we run."""
        self.supervisor.closing = True
        for deployment in list(self.deployments.values()):
            deployment.abort()
        self.ops.warm.close()  # first: a timer firing meanwhile would start a retirement
        await self.ops.background.close()
        if stop_instances:
            for fleet in self.fleets.values():
                await self.ops.stop_instances(fleet, list(fleet.instances))
        for runtime in self.runtimes.values():
            await runtime.close()
        self.bus.close()

    async def _recover(self, fleet: Fleet) -> list[Instance]:
        """Adopt what runs, gate and route the current release; return the strays."""
        runtime = self.runtimes[fleet.name]
        records = self.store.instances(fleet.name)
        adopted = await runtime.adopt(records)
        adopted_ids = {i.id for i in adopted}
        for record in records:
            if record.id not in adopted_ids:
                self.store.remove_instance(record.id)
        fleet.current = self.store.current(fleet.name)
        fleet.instances = list(adopted)
        strays = [i for i in adopted if i.version != fleet.current]  # a half-done deploy's
        if fleet.current is None:
            await self.ops.stop_instances(fleet, strays)
            return []
        fleet.route(strays)
        fleet.start_draining(strays)
        current = fleet.of_version(fleet.current)
        for instance in current:
            instance.state = "starting"  # re-gate what we adopted before routing it
        missing = fleet.config.instances - len(current)
        if missing > 0:
            release = self.ops.release(fleet.name, fleet.current)
            await self.ops.start_instances(fleet, release, missing)
        await self._gate_restored(fleet, fleet.of_version(fleet.current))
        fleet.route(fleet.ready(fleet.current))
        return strays

    async def _gate_restored(self, fleet: Fleet, instances: list[Instance]) -> None:
        """Gate each instance on its own: one that never becomes healthy is
        stopped and said, and the others serve. The daemon starts anyway, so
        that a fix can be deployed or the release rolled back."""
        results = await asyncio.gather(
            *(self.ops.gate(fleet, [i], alive=alive) for i in instances), return_exceptions=True
        )
        failed: list[tuple[Instance, DeployError]] = []
        for instance, result in zip(instances, results, strict=True):
            if isinstance(result, DeployError):
                failed.append((instance, result))
            elif isinstance(result, BaseException):
                raise result
        if not failed:
            return
        serving = len(instances) - len(failed)
        reason = (
            f"{len(failed)} instance(s) of {fleet.name} {fleet.current} did not become healthy "
            f"after the restart ({failed[0][1]}); {serving} of {fleet.config.instances} serve. "
            f"Deploy a fix or `zerodown rollback {fleet.name}`"
        )
        log.error("%s", reason)
        ids = [instance.id for instance, _ in failed]
        self.ops.publish(fleet.name, None, "restore_failed", instances=ids, reason=reason)
        await self.ops.stop_instances(fleet, [instance for instance, _ in failed])

    # -- the routing table -------------------------------------------------------------

    def table(self) -> RoutingTable:
        return self.ops.table()

    async def apply(self) -> None:
        await self.ops.apply()

    # -- deploy, rollback and friends (ControlPlane) ------------------------------------

    async def deploy(self, service: str, version: str, strategy: StrategyName | None = None) -> int:
        fleet = self._fleet(service)
        if version == fleet.current:
            raise NotDeployable(f"{service} {version} is already the current release")
        if service in self.deployments:  # before recording anything of the refused deploy
            raise DeployBusy(f"a deploy of {service} is already running")
        release = self._new_release(fleet, version)
        chosen = strategy or fleet.config.strategy
        return self._launch(fleet, release, plan(chosen, _situation(fleet), fleet.config))

    async def rollback(self, service: str, to: str | None = None) -> int:
        fleet = self._fleet(service)
        if service in self.deployments:
            raise NotDeployable(f"a deploy of {service} is running: use `zerodown abort {service}`")
        target = to or self.store.previous(service)
        if target is None:
            raise NotDeployable(f"{service} has no previous release to roll back to")
        if target == fleet.current:
            raise NotDeployable(f"{service} {target} is already the current release")
        release = self.store.release(service, target)
        if release is None:
            raise UnknownRelease(f"{service} has no release {target}")
        warm = len(fleet.ready(target))
        if warm and fleet.current is not None:
            # Still running from a blue-green keep-warm window: switch back at once.
            old = len(fleet.of_version(fleet.current))
            situation = Situation(old_instances=old, desired=fleet.config.instances)
            return self._launch(fleet, release, warm_rollback(warm, situation))
        deploy_plan = plan(fleet.config.strategy, _situation(fleet), fleet.config)
        return self._launch(fleet, release, deploy_plan)

    def _launch(self, fleet: Fleet, release: Release, deploy_plan: Plan) -> int:
        if fleet.name in self.deployments:
            raise DeployBusy(f"a deploy of {fleet.name} is already running")
        plan_json = json.dumps([json.loads(step_json(s)) for s in deploy_plan.steps])
        deploy_id = self.store.begin_deploy(
            fleet.name, release.version, deploy_plan.strategy, plan_json
        )
        lock = self.store.acquire_lock(fleet.name, self.owner, deploy_id)
        if lock is None:
            holder = self.store.lock(fleet.name)
            reason = f"locked by {holder.owner if holder else 'another deploy'}"
            self.store.finish_deploy(deploy_id, "failed", reason)
            raise DeployBusy(f"a deploy of {fleet.name} is already running ({reason})")
        deployment = Deployment(
            self.ops, self.store, fleet, deploy_id, release, fleet.current, deploy_plan
        )
        self.deployments[fleet.name] = deployment
        self._finished[deploy_id] = asyncio.get_running_loop().create_future()
        self.ops.background.spawn(self._run(deployment))
        self.bus.publish(
            fleet.name, deploy_id, "started", version=release.version, strategy=deploy_plan.strategy
        )
        return deploy_id

    async def _run(self, deployment: Deployment) -> None:
        name = deployment.fleet.name
        heartbeat = self.ops.background.spawn(self._heartbeat(name))
        try:
            await deployment.run()
        finally:
            heartbeat.cancel()
            self.deployments.pop(name, None)
            # A lock left behind is taken over once stale; a `wait` never woken
            # would hold the CLI until its timeout.
            self.ops.unless_store_fails(
                "release the deploy lock", self.store.release_lock, name, self.owner
            )
            done = self._finished.pop(deployment.id, None)
            if done is not None and not done.done():
                done.set_result(None)

    async def _heartbeat(self, service: str) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            self.ops.unless_store_fails("heartbeat", self.store.heartbeat, service, self.owner)

    async def wait(self, deploy_id: int, timeout: float | None = None) -> DeployView | None:
        done = self._finished.get(deploy_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), timeout)
        return self.deploy_view(deploy_id)

    def promote(self, service: str) -> None:
        deployment = self._running(service)
        deployment.promote()
        self.bus.publish(service, deployment.id, "promoted")  # a person's verdict: notified

    def abort(self, service: str) -> None:
        self._running(service).abort()

    def pause(self, service: str) -> None:
        deployment = self._running(service)
        deployment.pause()
        self.bus.publish(service, deployment.id, "paused")

    def resume(self, service: str) -> None:
        deployment = self._running(service)
        deployment.resume()
        self.bus.publish(service, deployment.id, "resumed")

    def _running(self, service: str) -> Deployment:
        self._fleet(service)
        deployment = self.deployments.get(service)
        if deployment is None:
            raise NotDeployable(f"no deploy of {service} is running")
        return deployment

    def _fleet(self, service: str) -> Fleet:
        fleet = self.fleets.get(service)
        if fleet is None:
            known = ", ".join(sorted(self.fleets)) or "none"
            raise UnknownService(f"no deployable service {service!r} (deployable: {known})")
        return fleet

    def _new_release(self, fleet: Fleet, version: str) -> Release:
        config = fleet.config
        assert config.command is not None
        release = Release(
            service=fleet.name,
            version=version,
            command=config.command,
            cwd=config.cwd,
            env=tuple(sorted(config.env.items())),
        )
        self.store.add_release(release)
        return release

    # -- views (ControlPlane) -----------------------------------------------------------

    def deploy_view(self, deploy_id: int) -> DeployView | None:
        record = self.store.deploy(deploy_id)
        if record is None:
            return None
        if record.outcome is None and deploy_id in self.ops.unrecorded:
            outcome, reason, at = self.ops.unrecorded[deploy_id]
            record = dataclasses.replace(
                record, state=outcome, outcome=outcome, reason=reason, finished_at=at
            )
        return deploy_view(record, self.store.journal_entries(deploy_id))

    def status(self, service: str | None = None) -> list[StatusView]:
        fleets = [self._fleet(service)] if service else list(self.fleets.values())
        return [self._status(fleet) for fleet in fleets]

    def _status(self, fleet: Fleet) -> StatusView:
        deployment = self.deployments.get(fleet.name)
        return status_view(
            fleet,
            deploying=self.deploy_view(deployment.id) if deployment else None,
            paused=bool(deployment and deployment.waiting_for_promote),
            pause=self._pause_view(deployment),
            warm=lambda version: self.ops.warm.holds(fleet.name, version),
            crash_loop=self.supervisor.crash_loop(fleet),
        )

    def _pause_view(self, deployment: Deployment | None) -> PauseView | None:
        if deployment is None:
            return None
        steps, index = deployment.plan.steps, deployment.step_index
        step = steps[index] if 0 <= index < len(steps) else None
        return pause_view(
            held=deployment.held,
            waiting_for_promote=deployment.waiting_for_promote,
            step=step,
            began=self._running_since(deployment.id, index) if isinstance(step, Pause) else None,
        )

    def _running_since(self, deploy_id: int, index: int) -> float | None:
        """When step `index` began, if it is still running (its last journal entry is "before")."""
        entries = [e for e in self.store.journal_entries(deploy_id) if e.step_index == index]
        return entries[-1].at if entries and entries[-1].phase == "before" else None

    def releases(self, service: str) -> list[ReleaseView]:
        self._fleet(service)
        return [release_view(r) for r in self.store.releases(service)]

    def events(self, after: int = 0, service: str | None = None) -> AsyncIterator[EventView]:
        return self.bus.follow(after, service)


def _situation(fleet: Fleet) -> Situation:
    serving = len(fleet.serving(fleet.current or ""))
    return Situation(old_instances=serving, desired=fleet.config.instances)


def _maintenance(service: ServiceConfig) -> str | None:
    page = service.recreate.maintenance_page
    if page is None:
        return None
    with open(page, encoding="utf-8") as source:
        return source.read()
