"""Runs one deploy: the steps of a plan, each journaled before and after it
runs, and the rollback when any of them fails.

A step handler is picked by the step's kind from a dict. Every wait has a
deadline from the service's config (deploy_timeout, drain_timeout,
stop_grace). The old release keeps serving until a step moves traffic, and
a failure at any point puts it back: a failed deploy leaves the old release
serving.

A failing store (a full disk, a deleted file) is not such a failure: the
store is where a rollback is recorded, so the rollback dance (starting
instances it cannot record) would go wrong in its turn. The deploy stops
moving traffic at once and settles on what the store knows (`_store_failed`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from zerodown.analysis.judge import Sample, judge
from zerodown.deploy.fleet import Fleet
from zerodown.deploy.gate import alive
from zerodown.deploy.operations import FleetOps
from zerodown.deploy.plan import (
    Analyze,
    Drain,
    Hold,
    KeepWarm,
    Pause,
    Plan,
    Role,
    SetTraffic,
    Start,
    Step,
    Stop,
    WaitHealthy,
)
from zerodown.deploy.recorded import record_current, recorded_current, recorded_ids, store_message
from zerodown.deploy.views import verdict_detail
from zerodown.errors import (
    CanaryBreach,
    DataPlaneDown,
    DeployAborted,
    DeployError,
    NotDeployable,
    ZerodownError,
)
from zerodown.release import DeployState, Instance, Outcome, Release
from zerodown.store.base import EndedStatus, Store, StoreError

log = logging.getLogger("zerodown.deploy")

JUDGE_EVERY = 1.0  # seconds between canary checks during a pause


def step_json(step: Step) -> str:
    return json.dumps(dataclasses.asdict(step))


class Deployment:
    """One run of a plan for one service.

    It acts on the world only through `ops` (FleetOps: instances, routing,
    events) and keeps its own record (journal, state, outcome) in `store`.
    """

    def __init__(
        self,
        ops: FleetOps,
        store: Store,
        fleet: Fleet,
        deploy_id: int,
        new: Release,
        old: str | None,
        plan: Plan,
    ) -> None:
        self.ops = ops
        self.store = store
        self.fleet = fleet
        self.id = deploy_id
        self.new = new
        self.old = old
        self.plan = plan
        self.state: DeployState = "pending"
        self.step_index = -1
        self.waiting_for_promote = False
        # Set from outside (a crash, an abort): raised at the next check.
        self.failure: DeployError | None = None
        self._promoted = asyncio.Event()
        self._running = asyncio.Event()  # cleared by pause(), set by resume()
        self._running.set()
        self._wake = asyncio.Event()
        self._baseline: tuple[Sample, Sample] | None = None
        self._next_look = 0  # canary requests in the window at the judge's next look
        self._verdict: dict[str, Any] | None = None  # the running step's last published verdict
        self._cause: ZerodownError | None = None  # why a rollback began, if one did

    def __repr__(self) -> str:
        return (
            f"<Deployment #{self.id} {self.fleet.name} {self.old}->{self.new.version} {self.state}>"
        )

    # -- control from outside -------------------------------------------------------

    def promote(self) -> None:
        """End the pause this deploy is in: a person's verdict for this step.

        Refused outside a pause: kept for later, a promote sent during the
        health gate would skip a pause nobody has looked at yet."""
        steps, index = self.plan.steps, self.step_index
        step = steps[index] if 0 <= index < len(steps) else None
        if not isinstance(step, Pause):
            now = step.kind.replace("_", " ") if step is not None else "not started"
            raise NotDeployable(
                f"{self.fleet.name} {self.new.version} is not at a pause (now: {now}); "
                f"promote once `zerodown status {self.fleet.name}` shows it paused"
            )
        self._promoted.set()
        self._wake.set()

    def abort(self) -> None:
        self.failure = DeployAborted("aborted by request")
        self._running.set()
        self._wake.set()

    def fail(self, error: DeployError) -> None:
        if self.failure is None:
            self.failure = error
        self._wake.set()

    def pause(self) -> None:
        self._running.clear()

    @property
    def held(self) -> bool:
        """Held by an operator's pause (until resume)."""
        return not self._running.is_set()

    def resume(self) -> None:
        self._running.set()

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> Outcome:
        try:
            return await self._run_plan()
        except StoreError as exc:
            return await self._store_failed(exc)

    async def _run_plan(self) -> Outcome:
        try:
            for index, step in enumerate(self.plan.steps):
                await self._checkpoint()
                await self._run_step(index, step)
            await self._checkpoint()
        except StoreError:
            raise  # see the module docstring: no rollback dance on a failing store
        except DeployAborted as exc:
            return await self._give_up("aborted", exc)
        except ZerodownError as exc:
            return await self._give_up("rolled_back", exc)
        except Exception as exc:  # a bug must still leave the old release serving
            log.exception("deploy %s crashed", self.id)
            return await self._give_up("rolled_back", DeployError(f"internal error: {exc!r}"))
        await self._succeed()
        return "succeeded"

    async def _run_step(self, index: int, step: Step) -> None:
        self.step_index = index
        self._set_state(STATE_OF_STEP[step.kind])
        entry = step_json(step)
        self.store.journal(self.id, index, entry, "before")
        self.ops.publish(
            self.fleet.name, self.id, "step", index=index, step=dataclasses.asdict(step)
        )
        self._verdict = None
        try:
            await HANDLERS[step.kind](self, step)
        except BaseException as exc:
            detail = verdict_detail(str(exc), self._verdict)  # why, with the verdict's numbers
            self.store.journal(self.id, index, entry, "failed", detail)
            raise
        self.store.journal(self.id, index, entry, "after", verdict_detail("", self._verdict))

    async def _checkpoint(self) -> None:
        if self.failure is not None:
            raise self.failure
        if not self._running.is_set():
            self._set_state("paused")
            await self._running.wait()
        if self.failure is not None:
            raise self.failure

    def _set_state(self, state: DeployState) -> None:
        self.state = state
        self.store.set_deploy_state(self.id, state)

    # -- helpers --------------------------------------------------------------------------

    def version(self, role: Role) -> str:
        if role == "new":
            return self.new.version
        if self.old is None:
            raise DeployError("the plan names an old release, but none is serving")
        return self.old

    def _alive(self, instance: Instance) -> bool:
        return alive(instance) and self.failure is None

    # -- step handlers -----------------------------------------------------------------

    async def _start(self, step: Start) -> None:
        release = (
            self.new
            if step.role == "new"
            else self.ops.release(self.fleet.name, self.version("old"))
        )
        await self.ops.start_instances(self.fleet, release, step.count)

    async def _wait_healthy(self, step: WaitHealthy) -> None:
        pending = [
            i for i in self.fleet.of_version(self.version(step.role)) if i.state == "starting"
        ]
        try:
            await self.ops.gate(self.fleet, pending, alive=self._alive)
        except DeployError:
            # `_alive` says no for every instance once the deploy failed from
            # outside (an abort, a crash): that is why, not "exited".
            if self.failure is not None:
                raise self.failure from None
            raise

    async def _set_traffic(self, step: SetTraffic) -> None:
        fleet, new = self.fleet, self.new.version
        if step.mode == "pool" or step.new_weight >= 100:
            fleet.pool_mode()
            fleet.route(fleet.ready(new))
            if step.mode == "split" and self.old is not None:
                fleet.start_draining(fleet.serving(self.old))  # the atomic switch
        else:
            fleet.canary_version = new if step.new_weight > 0 else None
            fleet.canary_weight = step.new_weight
            fleet.preview_version = new if step.preview else None
            if fleet.canary_version or fleet.preview_version:
                fleet.route(fleet.ready(new))
        await self.ops.apply()
        self._baseline = await self.ops.samples(self.fleet.name)
        self._next_look = self.fleet.config.canary.min_requests
        self.ops.publish(fleet.name, self.id, "traffic", split=fleet.traffic())

    async def _pause(self, step: Pause) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if step.seconds is None else loop.time() + step.seconds
        self.waiting_for_promote = step.seconds is None
        self._promoted.clear()  # stays set after a promote: Analyze reads it
        try:
            while not self._promoted.is_set():
                await self._checkpoint()
                remaining = JUDGE_EVERY if deadline is None else deadline - loop.time()
                if remaining <= 0:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), min(remaining, JUDGE_EVERY))
                except TimeoutError:
                    await self._judge(final=False)
        finally:
            self.waiting_for_promote = False

    async def _analyze(self, step: Analyze) -> None:
        """A final verdict for this canary step. "inconclusive" is never a pass:
        wait for enough requests up to deploy_timeout, then roll back. A manual
        `promote` during the preceding pause is a person's verdict and stands."""
        if self._promoted.is_set():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fleet.config.deploy_timeout
        self._next_look = 0  # the step's own look, now: a pass of the pause's looks is not kept
        while await self._judge(final=True) == "inconclusive":
            if loop.time() >= deadline:
                said = self._verdict["reason"] if self._verdict else "too few canary requests"
                raise CanaryBreach(f"no verdict before deploy_timeout: {said}")
            await self._checkpoint()
            await asyncio.sleep(JUDGE_EVERY)

    async def _drain(self, step: Drain) -> None:
        version = self.version(step.role)
        routed = [i for i in self.fleet.of_version(version) if i.id in self.fleet.routed]
        routed.sort(key=lambda i: i.id not in self.fleet.draining)  # already leaving go first
        await self.ops.drain(self.fleet, routed[: step.count])

    async def _stop(self, step: Stop) -> None:
        version = self.version(step.role)
        idle = [i for i in self.fleet.of_version(version) if i.id not in self.fleet.routed]
        await self.ops.stop_instances(self.fleet, idle[: step.count])

    async def _hold(self, step: Hold) -> None:
        self.fleet.hold = step.on
        await self.ops.apply()

    async def _keep_warm(self, step: KeepWarm) -> None:
        old = self.version("old")
        leaving = [i for i in self.fleet.of_version(old) if i.id in self.fleet.routed]
        await self.ops.drain(self.fleet, leaving)
        self.ops.keep_warm(self.fleet, old, step.seconds)

    # -- the canary judge --------------------------------------------------------------

    async def _judge(self, *, final: bool) -> str:
        if self._baseline is None or self.fleet.canary_version is None:
            return "pass"  # no canary pool in traffic: nothing to compare
        try:
            canary_now, stable_now = await self.ops.samples(self.fleet.name, wait=False)
        except DataPlaneDown as exc:
            # The proxy died and is being started again: no sample is no
            # evidence against the canary. This look is skipped; the next
            # one (counters reset by the restart: Sample.since) judges.
            log.warning("deploy %s: canary look skipped: %s", self.id, exc)
            return "inconclusive"
        canary = canary_now.since(self._baseline[0])
        stable = stable_now.since(self._baseline[1])
        # One look per doubling of the window (judge.fail_level spends the confidence over
        # them); a final verdict, and a fail wherever it comes, published with its numbers.
        if canary.requests < self._next_look:
            return "inconclusive"
        self._next_look = 2 * canary.requests
        verdict = judge(canary, stable, self.fleet.config.canary.criteria())
        if final or verdict.verdict == "fail":
            self._verdict = verdict.numbers()
            self.ops.publish(self.fleet.name, self.id, "analysis", **self._verdict)
        if verdict.verdict == "fail":
            raise CanaryBreach(verdict.reason)
        return verdict.verdict

    # -- endings ---------------------------------------------------------------------------

    async def _succeed(self) -> None:
        fleet = self.fleet
        fleet.pool_mode()
        fleet.current = self.new.version
        await self.ops.apply()
        self.store.set_current(fleet.name, self.new.version)
        self.store.finish_deploy(self.id, "succeeded", "")
        self.ops.prune(fleet.name)
        self.ops.publish(fleet.name, self.id, "finished", outcome="succeeded")

    async def _give_up(self, outcome: Outcome, cause: ZerodownError) -> Outcome:
        self._cause = cause
        self._set_state("rolling_back")
        self.ops.publish(self.fleet.name, self.id, "rolling_back", reason=str(cause))
        try:
            restored = await self._restore_old()
        except StoreError:
            raise
        except ZerodownError as exc:
            log.error("rollback of deploy %s failed: %s", self.id, exc)
            restored = False
            cause = DeployError(f"{cause}; and the rollback failed: {exc}")
        if not restored and outcome == "rolled_back":
            outcome = "failed"
        # Stopped by a person is no proof the release is broken: "aborted", not
        # "failed", and never `new` forever in `zerodown releases`.
        status: EndedStatus = "aborted" if outcome == "aborted" else "failed"
        self.store.mark_outcome(self.fleet.name, self.new.version, status)
        self.store.finish_deploy(self.id, outcome, str(cause))
        self.ops.publish(self.fleet.name, self.id, "finished", outcome=outcome, reason=str(cause))
        return outcome

    async def _restore_old(self) -> bool:
        """Old release back to full strength and in traffic; new one drained and stopped.

        Returns False when there was no old release to restore (a first deploy)."""
        fleet, ops = self.fleet, self.ops
        fleet.pool_mode()
        new_instances = fleet.of_version(self.new.version)
        fleet.start_draining(new_instances)
        if self.old is not None:
            await self._restore_capacity(self.old)
        fleet.hold = False
        await ops.apply()
        await ops.drain(fleet, [i for i in new_instances if i.id in fleet.routed])
        await ops.stop_instances(fleet, fleet.of_version(self.new.version))
        return self.old is not None

    async def _restore_capacity(self, old: str) -> None:
        fleet, ops = self.fleet, self.ops
        ops.cancel_warm(fleet, old)
        fleet.route(fleet.ready(old))  # undo any drain of the old release
        await ops.apply()
        missing = fleet.config.instances - len(fleet.ready(old))
        if missing > 0:
            started = await ops.start_instances(fleet, ops.release(fleet.name, old), missing)
            await ops.gate(fleet, started, alive=alive)
            fleet.route(started)
            await ops.apply()

    # -- when the store fails -------------------------------------------------------------

    async def _store_failed(self, error: StoreError) -> Outcome:
        """End the deploy `failed` with traffic where the store says it is.

        No further step runs and nothing is started (the store could not
        record it: a restart would find an orphan). Traffic goes back to the
        store's current release if it still has ready instances, else stays
        on the new release's; every other instance of the deploy is drained
        and stopped, so no routed target is one the store does not know.
        """
        log.error("deploy %s: the state store failed, stopping: %s", self.id, error)
        self.state = "rolling_back"  # in memory: the store may not take it
        serving = await self._settle_on_store()
        reason = f"state store write failed: {store_message(error)}; traffic left on {serving}"
        if serving == self.new.version:
            reason += record_current(self.store, self.fleet.name, serving)
        if self._cause is not None:
            reason += f" (while rolling back from: {self._cause})"
        self.state = "failed"
        self.ops.finish(self.id, "failed", reason)
        self.ops.publish(self.fleet.name, self.id, "finished", outcome="failed", reason=reason)
        return "failed"

    async def _settle_on_store(self) -> str:
        """Route one release's ready, recorded instances; drain and stop the
        deploy's others. Returns the version left serving ("nothing" if none)."""
        fleet, ops, new = self.fleet, self.ops, self.new.version
        known = recorded_ids(self.store, fleet)
        recorded = recorded_current(self.store, fleet.name, self.old)
        back = [i for i in fleet.ready(recorded) if i.id in known] if recorded else []
        stay = back or [i for i in fleet.ready(new) if i.id in known]
        version = stay[0].version if stay else None
        if version is not None and version != new:
            ops.cancel_warm(fleet, version)
        ours = {v for v in (new, self.old) if v is not None}
        staying = {i.id for i in stay}
        leaving = [
            i
            for i in fleet.instances
            if i.id not in staying and (i.version in ours or i.id not in known)
        ]
        fleet.pool_mode()
        fleet.hold = False
        fleet.current = version
        fleet.route(stay)
        fleet.start_draining(leaving)
        await ops.apply()
        await ops.drain(fleet, [i for i in leaving if i.id in fleet.routed])
        await ops.stop_instances(fleet, leaving)
        return version or "nothing"


Handler = Callable[[Deployment, Any], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    "start": Deployment._start,
    "wait_healthy": Deployment._wait_healthy,
    "set_traffic": Deployment._set_traffic,
    "pause": Deployment._pause,
    "analyze": Deployment._analyze,
    "drain": Deployment._drain,
    "stop": Deployment._stop,
    "hold": Deployment._hold,
    "keep_warm": Deployment._keep_warm,
}

STATE_OF_STEP: dict[str, DeployState] = {
    "start": "starting",
    "wait_healthy": "gating",
    "set_traffic": "shifting",
    "pause": "paused",
    "analyze": "analyzing",
    "drain": "draining",
    "stop": "draining",
    "hold": "shifting",
    "keep_warm": "draining",
}
