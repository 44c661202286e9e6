"""Crash supervision of the current release, outside deploys.

An instance of the current release that exits without being told to is
replaced, after a back-off (runtime/backoff.py) that grows with every crash
of the service within `crash_loop_window`. `crash_loop_count` crashes within
the window is a crash loop: the cause is most often outside the release (a
database, a full disk), so the missing instances are not given up, they are
retried slowly, once per window, and capacity comes back by itself when the
cause goes away. `status` shows the loop (crashes, the next retry) until a
restarted instance stays up for a whole window (event `crash_loop_ended`).

There is no automatic rollback here: the release was promoted healthy, and
rolling back is the operator's call (`zerodown rollback`). Inside a deploy a
crash of the new release fails the deploy, whose rollback restores the old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zerodown.deploy.contract import CrashLoopView
from zerodown.deploy.fleet import Fleet
from zerodown.deploy.gate import alive
from zerodown.deploy.operations import FleetOperations
from zerodown.errors import DeployError
from zerodown.release import Instance
from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import exit_text

if TYPE_CHECKING:
    from zerodown.deploy.executor import Deployment

log = logging.getLogger("zerodown.deploy")


@dataclass
class CrashLoop:
    """A crash loop of one service's current release, as `status` shows it."""

    version: str
    crashes: int
    since: float  # wall clock, when it began
    next_retry: float  # wall clock
    message: str
    last_crash: float  # monotonic: a restart is proven only by a window with no crash after it

    def view(self) -> CrashLoopView:
        return CrashLoopView(
            version=self.version,
            crashes=self.crashes,
            since=self.since,
            next_retry=self.next_retry,
            message=self.message,
        )


class Supervisor:
    def __init__(
        self,
        ops: FleetOperations,
        running: Callable[[str], Deployment | None],
        new_backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._ops = ops
        self._running = running
        self._new_backoff = new_backoff
        self._backoff: dict[str, Backoff] = {}
        self._last_crash: dict[str, str] = {}  # per service: how the last crash ended
        self._loops: dict[str, CrashLoop] = {}
        self.closing = False

    def __repr__(self) -> str:
        return f"<Supervisor crash_loops={sorted(self._loops)}>"

    def crash_loop(self, fleet: Fleet) -> CrashLoopView | None:
        """The crash loop of the current release, if it is in one."""
        loop = self._loops.get(fleet.name)
        return loop.view() if loop is not None and loop.version == fleet.current else None

    # -- an instance exited -------------------------------------------------------------

    def on_exit(self, instance: Instance, code: int | None) -> None:
        """The runtime's exit callback: every exit we did not ask for is a crash."""
        fleet = self._ops.fleets.get(instance.service)
        if fleet is None or self.closing:
            return
        known = fleet.find(instance.id)
        if known is None or known.state == "stopped":
            return
        known.state = "crashed"
        said = self._report_crash(fleet, known, code)
        self._ops.forget(fleet, known)
        self._ops.background.spawn(self._ops.apply())  # out of the table at once
        deployment = self._running(fleet.name)
        if deployment is not None and known.version == deployment.new.version:
            deployment.fail(DeployError(said))
        elif deployment is None and known.version == fleet.current:
            self._ops.background.spawn(self._replace(fleet, known.version))

    def _report_crash(self, fleet: Fleet, instance: Instance, code: int | None) -> str:
        """Publish what the runtime knows of a crash: how it ended, its log's
        path and last lines. Returns the same in one message."""
        report = self._ops.runtimes[fleet.name].exit_report(instance)
        how = report.how if report else exit_text(code)
        said = f"instance {instance.id} of {instance.version} crashed ({how})"
        said += f"; {report.output()}" if report else ""
        self._last_crash[fleet.name] = said
        self._ops.publish(
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

    # -- restarting -----------------------------------------------------------------------

    async def _replace(self, fleet: Fleet, version: str) -> None:
        """Restart one instance of the current release after its back-off."""
        if not await self._wait_turn(fleet, version, self._count_crash(fleet, version)):
            return
        if len(fleet.ready(version)) >= fleet.config.instances:
            self._end_loop(fleet, "capacity is back")  # a rollback restored it meanwhile
            return
        try:
            started = await self._ops.start_instances(
                fleet, self._ops.release(fleet.name, version), 1
            )
        except DeployError as exc:  # exited at once: no exit callback will count it
            self._restart_failed(fleet, version, exc, again=True)
            return
        began = time.monotonic()
        try:
            await self._ops.gate(fleet, started, alive=alive)
        except DeployError as exc:
            # A crash during the gate went through on_exit, which tries again;
            # one that is up but never healthy is stopped, not left unrouted.
            unhealthy = [i for i in started if alive(i)]
            await self._ops.stop_instances(fleet, unhealthy)
            self._restart_failed(fleet, version, exc, again=bool(unhealthy))
            return
        fleet.route(started)
        await self._ops.apply()
        if fleet.name in self._loops:
            self._ops.background.spawn(self._confirm(fleet, started, began))

    async def _wait_turn(self, fleet: Fleet, version: str, delay: float) -> bool:
        """Sleep `delay`; True if the restart should go ahead then.

        Not while a deploy runs: it restores capacity (its rollback starts
        the old release to full strength) or replaces the release. In a
        crash loop, look again a window later in case it did neither."""
        while True:
            await asyncio.sleep(delay)
            if self.closing:
                return False
            if version != fleet.current:  # a deploy replaced the release: its loop is over
                if fleet.name in self._loops and self._loops[fleet.name].version == version:
                    del self._loops[fleet.name]
                return False
            if self._running(fleet.name) is None:
                return True
            loop = self._loops.get(fleet.name)
            if loop is None:
                return False
            delay = self._backoff[fleet.name].crash_loop_window
            loop.next_retry = time.time() + delay

    def _count_crash(self, fleet: Fleet, version: str) -> float:
        """Count a crash; return how long to wait before the restart."""
        backoff = self._backoff.setdefault(fleet.name, self._new_backoff())
        now = time.monotonic()
        delay = backoff.next_delay(now)  # this crash counts, as Backoff documents
        window = backoff.crash_loop_window
        loop = self._loops.get(fleet.name)
        if loop is not None and loop.version == version:
            loop.crashes += 1
            loop.last_crash = now
            loop.next_retry = _earliest(loop.next_retry, time.time() + window)
            return window
        if backoff.crash_loop(now):
            self._begin_loop(fleet, version, backoff.crashes(now), window, now)
            return window
        return delay

    def _restart_failed(self, fleet: Fleet, version: str, exc: DeployError, *, again: bool) -> None:
        """A restart that failed is one more crash: try again (with back-off,
        or once a window in a crash loop), rather than stop supervising."""
        log.warning("restart of %s %s failed: %s", fleet.name, version, exc)
        self._last_crash[fleet.name] = str(exc)
        self._ops.publish(fleet.name, None, "restart_failed", version=version, reason=str(exc))
        if again:
            self._ops.background.spawn(self._replace(fleet, version))

    # -- crash loops ------------------------------------------------------------------------

    def _begin_loop(
        self, fleet: Fleet, version: str, crashes: int, window: float, now: float
    ) -> None:
        """Say once, in the log, the events and `status`, that restarts slow down."""
        serving = len(fleet.serving(version))
        message = (
            f"{fleet.name} {version} crashed {crashes} times within {window:g}s: retrying "
            f"once every {window:g}s; {serving} of {fleet.config.instances} instances serve. "
            f"Deploy a fix or `zerodown rollback {fleet.name}`. "
            f"Last: {self._last_crash.get(fleet.name, '?')}"
        )
        log.error("%s", message)
        since = time.time()
        loop = CrashLoop(version, crashes, since, since + window, message, last_crash=now)
        self._loops[fleet.name] = loop
        self._ops.publish(
            fleet.name,
            None,
            "crash_loop",
            version=version,
            crashes=crashes,
            since=since,
            next_retry=loop.next_retry,
            serving=serving,
            reason=message,
        )

    async def _confirm(self, fleet: Fleet, started: list[Instance], began: float) -> None:
        """End the crash loop if the restarted instances stay up for a window."""
        await asyncio.sleep(self._backoff[fleet.name].crash_loop_window)
        loop = self._loops.get(fleet.name)
        if loop is None or loop.last_crash > began:
            return  # it crashed again since (on_exit has retried)
        if all(fleet.find(i.id) is i and i.state == "ready" for i in started):
            self._end_loop(fleet, f"{len(started)} restarted instance(s) stayed up")

    def _end_loop(self, fleet: Fleet, why: str) -> None:
        loop = self._loops.pop(fleet.name, None)
        if loop is None:
            return
        self._backoff[fleet.name].reset()
        log.info("%s %s: crash loop ended (%s)", fleet.name, loop.version, why)
        self._ops.publish(
            fleet.name,
            None,
            "crash_loop_ended",
            version=loop.version,
            crashes=loop.crashes,
            reason=why,
        )


def _earliest(scheduled: float, new: float) -> float:
    """The next retry shown: the earliest still ahead (a past one has happened)."""
    return new if scheduled < time.time() else min(scheduled, new)
