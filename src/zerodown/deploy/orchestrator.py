"""The control plane: deploys, rollbacks and supervision of every service
that zerodown runs (those with a `command`).

It decides; the data plane obeys the RoutingTable it builds; the runtime
starts and stops processes. Deploy runs are Deployments (executor.py); this
module owns what outlives one: fleets, the lock, the store, crash handling,
warm releases, and recovery after the daemon itself was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from zerodown.config import Config
from zerodown.config.service import ServiceConfig
from zerodown.config.strategy import StrategyName
from zerodown.dataplane.base import DataPlane
from zerodown.deploy.control import View
from zerodown.deploy.events import EventBus
from zerodown.deploy.executor import Deployment, step_json
from zerodown.deploy.fleet import Fleet
from zerodown.deploy.gate import wait_healthy
from zerodown.deploy.plan import Drain, Pause, Plan, SetTraffic, Stop
from zerodown.deploy.strategies import Situation, plan
from zerodown.errors import (
    DeployBusy,
    DeployError,
    NotDeployable,
    UnknownRelease,
    UnknownService,
)
from zerodown.release import Instance, Outcome, Release
from zerodown.routing import RoutingTable
from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import Runtime, exit_text
from zerodown.store.base import DeployRecord, Store, StoreError, local_owner

log = logging.getLogger("zerodown.deploy")

HEARTBEAT_EVERY = 10.0  # seconds between lock heartbeats while a deploy runs
RETIRE_RETRY = 1.0  # seconds before a warm release's stop is tried again while a deploy runs

RuntimeFactory = Callable[[str, ServiceConfig], Runtime]


class Orchestrator:
    def __init__(
        self,
        config: Config,
        dataplane: DataPlane,
        store: Store,
        runtime_for: RuntimeFactory,
    ) -> None:
        self.config = config
        self.dataplane = dataplane
        self.store = store
        self.bus = EventBus(store)
        self.owner = local_owner()
        self.fleets: dict[str, Fleet] = {}
        self.runtimes: dict[str, Runtime] = {}
        for name, service in config.services.items():
            if service.command is None:
                continue  # fixed upstreams: a plain proxy, nothing to run
            self.fleets[name] = Fleet(name, service, maintenance_html=_maintenance(service))
            runtime = runtime_for(name, service)
            runtime.on_exit(self._on_exit)
            self.runtimes[name] = runtime
        self.deployments: dict[str, Deployment] = {}
        self._finished: dict[int, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warm: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._backoff: dict[str, Backoff] = {}
        # Per service: how the last crash or failed restart ended, and the
        # crash loop that stopped restarts (until one succeeds again).
        self._last_crash: dict[str, str] = {}
        self._crash_loops: dict[str, View] = {}
        self._closing = False
        # Outcomes the store could not record (it failed): deploy id -> outcome,
        # reason, finished at. Views show these, so `wait` and the CLI still
        # get the ending.
        self._unrecorded: dict[int, tuple[Outcome, str, float]] = {}

    def __repr__(self) -> str:
        return f"<Orchestrator services={list(self.fleets)} deploying={list(self.deployments)}>"

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Take back what a previous daemon left running, then serve the current releases."""
        for record in self.store.unfinished_deploys():
            self._end_interrupted(record)
        strays = [(fleet, await self._recover(fleet)) for fleet in self.fleets.values()]
        await self.apply()
        # A half-done deploy's instances may still carry requests: the data
        # plane served on while no daemon ran. Out of the table now (draining),
        # they finish those before they stop, off the start-up path.
        for fleet, instances in strays:
            if instances:
                self._spawn(self._retire_strays(fleet, instances))

    async def _retire_strays(self, fleet: Fleet, instances: list[Instance]) -> None:
        await self.drain(fleet, instances)
        await self.stop_instances(fleet, instances)

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
        self._closing = True
        for deployment in list(self.deployments.values()):
            deployment.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for handle in self._warm.values():
            handle.cancel()
        if stop_instances:
            for fleet in self.fleets.values():
                await self.stop_instances(fleet, list(fleet.instances))
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
            await self.stop_instances(fleet, strays)
            return []
        fleet.route(strays)
        fleet.start_draining(strays)
        current = fleet.of_version(fleet.current)
        for instance in current:
            instance.state = "starting"  # re-gate what we adopted before routing it
        missing = fleet.config.instances - len(current)
        if missing > 0:
            await self.start_instances(fleet, self.release(fleet.name, fleet.current), missing)
        await self.gate(fleet, fleet.of_version(fleet.current), alive=_alive)
        fleet.route(fleet.ready(fleet.current))
        return strays

    # -- the routing table -------------------------------------------------------------

    def table(self) -> RoutingTable:
        static = self.config.routing_table()
        services = tuple(
            self.fleets[spec.name].spec() if spec.name in self.fleets else spec
            for spec in static.services
        )
        return RoutingTable(services=services)

    async def apply(self) -> None:
        await self.dataplane.apply(self.table())

    # -- deploy, rollback and friends (ControlPlane) ------------------------------------

    async def deploy(self, service: str, version: str, strategy: StrategyName | None = None) -> int:
        fleet = self._fleet(service)
        if version == fleet.current:
            raise NotDeployable(f"{service} {version} is already the current release")
        if service in self.deployments:  # before recording anything of the refused deploy
            raise DeployBusy(f"a deploy of {service} is already running")
        release = self._new_release(fleet, version)
        situation = Situation(
            old_instances=len(fleet.serving(fleet.current or "")), desired=fleet.config.instances
        )
        chosen = strategy or fleet.config.strategy
        return self._launch(fleet, release, plan(chosen, situation, fleet.config))

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
        if warm >= fleet.config.instances and fleet.current is not None:
            # Still running from a blue-green keep-warm window: switch back at once.
            old = len(fleet.of_version(fleet.current))
            steps = (SetTraffic("split", 100.0), Drain("old", old), Stop("old", old))
            return self._launch(fleet, release, Plan("blue_green", steps))
        situation = Situation(
            old_instances=len(fleet.serving(fleet.current or "")), desired=fleet.config.instances
        )
        return self._launch(fleet, release, plan(fleet.config.strategy, situation, fleet.config))

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
        deployment = Deployment(self, fleet, deploy_id, release, fleet.current, deploy_plan)
        self.deployments[fleet.name] = deployment
        self._finished[deploy_id] = asyncio.get_running_loop().create_future()
        self._spawn(self._run(deployment))
        self.bus.publish(
            fleet.name, deploy_id, "started", version=release.version, strategy=deploy_plan.strategy
        )
        return deploy_id

    async def _run(self, deployment: Deployment) -> None:
        name = deployment.fleet.name
        heartbeat = self._spawn(self._heartbeat(name))
        try:
            await deployment.run()
        finally:
            heartbeat.cancel()
            self.deployments.pop(name, None)
            # A lock left behind is taken over once stale; a `wait` never woken
            # would hold the CLI until its timeout.
            self._unless_store_fails(
                "release the deploy lock", self.store.release_lock, name, self.owner
            )
            done = self._finished.pop(deployment.id, None)
            if done is not None and not done.done():
                done.set_result(None)

    async def _heartbeat(self, service: str) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            self._unless_store_fails("heartbeat", self.store.heartbeat, service, self.owner)

    def finish(self, deploy_id: int, outcome: Outcome, reason: str) -> None:
        """Close a deploy in the store or, when the store fails, in memory, so
        that its ending still reaches `wait`, `status` and the CLI."""
        try:
            self.store.finish_deploy(deploy_id, outcome, reason)
        except StoreError as exc:
            log.error(
                "deploy %s ended %s, but the store could not record it: %s", deploy_id, outcome, exc
            )
            self._unrecorded[deploy_id] = (outcome, reason, time.time())

    def _unless_store_fails(self, what: str, write: Callable[..., object], *args: Any) -> None:
        """A write whose failure must not stop what calls it (bookkeeping, not
        state a deploy depends on): logged, then forgotten."""
        try:
            write(*args)
        except StoreError as exc:
            log.error("could not %s in the state store: %s", what, exc)

    async def wait(self, deploy_id: int, timeout: float | None = None) -> View | None:
        done = self._finished.get(deploy_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), timeout)
        return self.deploy_view(deploy_id)

    def promote(self, service: str) -> None:
        self._running(service).promote()

    def abort(self, service: str) -> None:
        self._running(service).abort()

    def pause(self, service: str) -> None:
        self._running(service).pause()

    def resume(self, service: str) -> None:
        self._running(service).resume()

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

    def release(self, service: str, version: str) -> Release:
        release = self.store.release(service, version)
        if release is None:
            raise DeployError(f"{service} has no release {version} on record")
        return release

    def prune(self, service: str) -> None:
        protect = {v for v in (self.store.current(service), self.store.previous(service)) if v}
        protect |= {i.version for i in self.fleets[service].instances}
        self.store.prune(service, self.fleets[service].config.keep_releases, protect)

    # -- doing things to instances (used by Deployment) ----------------------------------

    async def start_instances(self, fleet: Fleet, release: Release, count: int) -> list[Instance]:
        started = await self.runtimes[fleet.name].start(release, count)
        # All in the fleet before any is saved: should the store fail, the
        # fleet still knows every process it has to stop.
        fleet.instances.extend(started)
        for instance in started:
            self.store.save_instance(instance)
        self.bus.publish(
            fleet.name,
            None,
            "instances_started",
            version=release.version,
            ids=[i.id for i in started],
        )
        return started

    async def gate(
        self, fleet: Fleet, instances: list[Instance], alive: Callable[[Instance], bool]
    ) -> None:
        health = fleet.config.health
        await wait_healthy(
            instances,
            health.spec() if health else None,
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
        results = await asyncio.gather(
            *(
                self.dataplane.drain(fleet.name, i.address, timeout)
                for i in instances
                if i.id in fleet.routed
            )
        )
        fleet.unroute(instances)
        await self.apply()
        cut = sum(r.cancelled for r in results)
        self.bus.publish(fleet.name, None, "drained", ids=[i.id for i in instances], cancelled=cut)

    async def stop_instances(self, fleet: Fleet, instances: list[Instance]) -> None:
        if not instances:
            return
        grace = fleet.config.stop_grace
        for instance in instances:
            instance.state = "stopped"  # before the signal: its exit is expected, not a crash
        await asyncio.gather(*(self.runtimes[fleet.name].stop(i, grace) for i in instances))
        for instance in instances:
            fleet.forget(instance)
            # A record left of a stopped process is harmless: the next start
            # finds it dead and drops it.
            self._unless_store_fails("forget an instance", self.store.remove_instance, instance.id)
        self.bus.publish(fleet.name, None, "instances_stopped", ids=[i.id for i in instances])

    def keep_warm(self, fleet: Fleet, version: str, seconds: float) -> None:
        """The old release stays up for `seconds` so a rollback can switch back at once."""
        loop = asyncio.get_running_loop()
        self._warm[(fleet.name, version)] = loop.call_later(
            seconds, lambda: self._spawn(self._retire(fleet, version))
        )

    def cancel_warm(self, fleet: Fleet, version: str) -> None:
        handle = self._warm.pop((fleet.name, version), None)
        if handle is not None:
            handle.cancel()

    async def _retire(self, fleet: Fleet, version: str) -> None:
        self._warm.pop((fleet.name, version), None)
        if version == fleet.current:
            return  # rolled back to it since: it serves again
        if fleet.name in self.deployments:
            # A deploy (perhaps a rollback to this very release) decides now; look again later.
            self.keep_warm(fleet, version, RETIRE_RETRY)
            return
        idle = [i for i in fleet.of_version(version) if i.id not in fleet.routed]
        await self.stop_instances(fleet, idle)

    # -- crashes -------------------------------------------------------------------------

    def _on_exit(self, instance: Instance, code: int | None) -> None:
        fleet = self.fleets.get(instance.service)
        if fleet is None or self._closing:
            return
        known = fleet.find(instance.id)
        if known is None or known.state == "stopped":
            return
        known.state = "crashed"
        said = self._report_crash(fleet, known, code)
        fleet.forget(known)
        self._unless_store_fails("forget an instance", self.store.remove_instance, known.id)
        self._spawn(self.apply())  # out of the table at once
        deployment = self.deployments.get(fleet.name)
        if deployment is not None and known.version == deployment.new.version:
            deployment.fail(DeployError(said))
        elif deployment is None and known.version == fleet.current:
            self._spawn(self._replace(fleet, known.version))

    def _report_crash(self, fleet: Fleet, instance: Instance, code: int | None) -> str:
        """Publish what the runtime knows of a crash: how it ended, its log's
        path and last lines. Returns the same in one message."""
        report = self.runtimes[fleet.name].exit_report(instance)
        how = report.how if report else exit_text(code)
        said = f"instance {instance.id} of {instance.version} crashed ({how})"
        said += f"; {report.output()}" if report else ""
        self._last_crash[fleet.name] = said
        self.bus.publish(
            fleet.name,
            None,
            "instance_crashed",
            id=instance.id,
            version=instance.version,
            code=code,
            how=how,
            log=str(report.log) if report and report.log else None,
            tail=list(report.tail) if report else [],
        )
        return said

    async def _replace(self, fleet: Fleet, version: str) -> None:
        """Restart a crashed instance of the current release, with back-off;
        a crash loop stops the restarts, and says so (`_crash_loop`)."""
        backoff = self._backoff.setdefault(fleet.name, Backoff())
        now = time.monotonic()
        delay = backoff.next_delay(now)  # this crash counts, as Backoff documents
        if backoff.crash_loop(now):
            self._crash_loop(fleet, version, backoff.crashes(now), backoff.crash_loop_window)
            return
        await asyncio.sleep(delay)
        if version != fleet.current or fleet.name in self.deployments or self._closing:
            return
        if len(fleet.ready(version)) >= fleet.config.instances:
            return
        try:
            started = await self.start_instances(fleet, self.release(fleet.name, version), 1)
        except DeployError as exc:  # exited at once: no exit callback will count it
            self._restart_failed(fleet, version, exc, again=True)
            return
        try:
            await self.gate(fleet, started, alive=_alive)
        except DeployError as exc:
            # A crash during the gate went through _on_exit, which tries again;
            # one that is up but never healthy is stopped, not left unrouted.
            unhealthy = [i for i in started if _alive(i)]
            await self.stop_instances(fleet, unhealthy)
            self._restart_failed(fleet, version, exc, again=bool(unhealthy))
            return
        fleet.route(started)
        self._crash_loops.pop(fleet.name, None)
        await self.apply()

    def _restart_failed(self, fleet: Fleet, version: str, exc: DeployError, *, again: bool) -> None:
        """A restart that failed is one more crash: try again (with back-off)
        until it is a crash loop, rather than stop supervising without a word."""
        log.warning("restart of %s %s failed: %s", fleet.name, version, exc)
        self._last_crash[fleet.name] = str(exc)
        self.bus.publish(fleet.name, None, "restart_failed", version=version, reason=str(exc))
        if again:
            self._spawn(self._replace(fleet, version))

    def _crash_loop(self, fleet: Fleet, version: str, crashes: int, window: float) -> None:
        """Restarts stop: say so once, in the log, the events and `status`."""
        if fleet.name in self._crash_loops:
            return
        serving = len(fleet.serving(version))
        message = (
            f"{fleet.name} {version} crashed {crashes} times within {window:g}s: not restarting "
            f"it; {serving} of {fleet.config.instances} instances serve. Deploy a fix or "
            f"`zerodown rollback {fleet.name}`. Last: {self._last_crash.get(fleet.name, '?')}"
        )
        log.error("%s", message)
        loop: View = {"version": version, "crashes": crashes, "since": time.time()}
        self._crash_loops[fleet.name] = loop | {"message": message}
        self.bus.publish(fleet.name, None, "crash_loop", **loop, serving=serving, reason=message)

    # -- views -----------------------------------------------------------------------------

    def deploy_view(self, deploy_id: int) -> View | None:
        record = self.store.deploy(deploy_id)
        if record is not None and record.outcome is None and deploy_id in self._unrecorded:
            outcome, reason, at = self._unrecorded[deploy_id]
            record = dataclasses.replace(
                record, state=outcome, outcome=outcome, reason=reason, finished_at=at
            )
        return None if record is None else self._deploy_view(record)

    def _deploy_view(self, record: DeployRecord) -> View:
        steps = [
            {
                "index": entry.step_index,
                "kind": json.loads(entry.step_json).get("kind"),
                "step": json.loads(entry.step_json),
                "phase": entry.phase,
                "detail": entry.detail,
                "at": entry.at,
            }
            for entry in self.store.journal_entries(record.id)
        ]
        return {
            "id": record.id,
            "service": record.service,
            "version": record.version,
            "strategy": record.strategy,
            "state": record.state,
            "outcome": record.outcome,
            "reason": record.reason or None,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "steps": steps,
        }

    def status(self, service: str | None = None) -> list[View]:
        fleets = [self._fleet(service)] if service else list(self.fleets.values())
        return [self._status(fleet) for fleet in fleets]

    def _status(self, fleet: Fleet) -> View:
        deployment = self.deployments.get(fleet.name)
        instances = [
            {
                "id": i.id,
                "version": i.version,
                "address": i.address,
                "state": self._shown_state(fleet, i),
                "routed": i.id in fleet.routed,
            }
            for i in fleet.instances
        ]
        return {
            "service": fleet.name,
            "current": fleet.current,
            "deploying": self.deploy_view(deployment.id) if deployment else None,
            "instances": instances,
            "traffic": fleet.traffic(),
            "paused": bool(deployment and deployment.waiting_for_promote),
            "pause": self._pause_view(deployment),
            "crash_loop": self._crash_loop_view(fleet),
        }

    def _pause_view(self, deployment: Deployment | None) -> View | None:
        """Why the running deploy waits, if it does: {"by", "left"} (see control.py)."""
        if deployment is None:
            return None
        # Deployment has no public flag for an operator's pause; _running is it.
        if not deployment._running.is_set():
            return {"by": "operator", "left": None}
        if deployment.waiting_for_promote:
            return {"by": "promote", "left": None}
        steps, index = deployment.plan.steps, deployment.step_index
        step = steps[index] if 0 <= index < len(steps) else None
        if isinstance(step, Pause) and step.seconds is not None:
            began = self._running_since(deployment.id, index)
            if began is not None:
                left = max(0.0, began + step.seconds - time.time())
                return {"by": "timer", "left": round(left, 1)}
        return None

    def _running_since(self, deploy_id: int, index: int) -> float | None:
        """When step `index` began, if it is still running (its last journal entry is "before")."""
        entries = [e for e in self.store.journal_entries(deploy_id) if e.step_index == index]
        return entries[-1].at if entries and entries[-1].phase == "before" else None

    def _crash_loop_view(self, fleet: Fleet) -> View | None:
        """The crash loop that stopped restarts of the current release, if one did."""
        loop = self._crash_loops.get(fleet.name)
        return loop if loop is not None and loop["version"] == fleet.current else None

    def _shown_state(self, fleet: Fleet, instance: Instance) -> str:
        """The instance's state as `status` shows it. A blue-green release kept
        warm after the switch is ready but out of traffic: "standby", so it does
        not read as a serving instance."""
        if instance.id in fleet.draining:
            return "draining"
        warm = (fleet.name, instance.version) in self._warm
        if warm and instance.state == "ready" and instance.id not in fleet.routed:
            return "standby"
        return instance.state

    def releases(self, service: str) -> list[View]:
        self._fleet(service)
        return [
            {
                "version": r.version,
                "status": r.status,
                "created_at": r.created_at,
                "last_deployed_at": r.last_deployed_at,
            }
            for r in self.store.releases(service)
        ]

    def events(self, after: int = 0, service: str | None = None) -> AsyncIterator[View]:
        return self.bus.follow(after, service)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _alive(instance: Instance) -> bool:
    return instance.state not in ("crashed", "stopped")


def _maintenance(service: ServiceConfig) -> str | None:
    page = service.recreate.maintenance_page
    if page is None:
        return None
    with open(page, encoding="utf-8") as source:
        return source.read()
