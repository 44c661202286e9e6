"""ProcessRuntime: instances as local processes, the default runtime.

An instance is the release's `command` in its own session, so its pid is
also its process group: a stop signals everything the app started, and
nothing a terminal sends to the daemon reaches the apps. Its output goes
through a pipe to a rotated log file. A watcher per instance notices its exit
at once; an exit nobody asked for is reported to the on_exit callbacks, and
what to do about it (restart with a Backoff, roll back) is the orchestrator's
call.

After a daemon restart, `adopt` takes back instances still running. Their
identity is (pid, start time), so a pid the kernel reused is never mistaken
for ours. An adopted process is not our child: its exit code is unknown, and
its output is no longer captured (the pipe died with the old daemon; an app
that does not ignore SIGPIPE may die on its next print, and is then reported
as exited like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import signal
import subprocess
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from zerodown.config.defaults import PORTS, STOP_GRACE
from zerodown.release import Instance, Release
from zerodown.runtime import owner, procfs
from zerodown.runtime.base import ExitCallback, ExitReport, PortOwner, Runtime
from zerodown.runtime.logs import RotatingLog, pump, tail
from zerodown.runtime.ports import PortAllocator, Probe, can_listen, ephemeral_overlap
from zerodown.runtime.spawn import InstanceExited, RuntimeStartError, spawn, until_exit

__all__ = ["InstanceExited", "ProcessRuntime", "RuntimeStartError"]

log = logging.getLogger(__name__)

LOG_MAX_BYTES: Final = 10 * 2**20
LOG_BACKUPS: Final = 3
KILL_TIMEOUT: Final = 5.0  # after SIGKILL; only a process stuck in the kernel takes longer
PORT_FREE_TIMEOUT: Final = 2.0  # after exit, for the port to take a new listener
PORT_POLL: Final = 0.05
LOG_FLUSH_TIMEOUT: Final = 1.0  # after exit, for the last output to reach the log
TAIL_LINES: Final = 10  # of an exited instance's log, in its ExitReport
EXITS_KEPT: Final = 256  # ExitReports remembered, oldest forgotten first

_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9._-]")
# Ports held by any ProcessRuntime of this process (one per service): see ports.py.
_CLAIMED_PORTS: set[int] = set()


@dataclass(eq=False)
class _Watched:
    """What the runtime keeps about one instance it believes alive."""

    instance: Instance
    child: subprocess.Popen[bytes] | None  # None: adopted, not our child
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    returncode: int | None = None  # negative: killed by that signal; None: unknown
    stopping: asyncio.Task[int | None] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # watcher, log pump
    pump: asyncio.Task[None] | None = None  # copies its output to the log until EOF
    pipe: asyncio.ReadTransport | None = None  # our end of its output pipe
    log: RotatingLog | None = None

    def alive(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None  # reaps it if it has exited
        pid, started = self.instance.pid, self.instance.pid_started
        return pid is not None and started is not None and procfs.is_running(pid, started)

    def close_output(self) -> None:
        """Close our end of the pipe and the log (again is fine).

        Closing the pipe is what the daemon's exit would do; a pipe left open
        and unread would fill, and the app would block on its next print.
        """
        if self.pipe is not None:
            self.pipe.close()
        if self.log is not None:
            self.log.close()


class ProcessRuntime(Runtime):
    """Runs instances as local processes; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        *,
        port_range: tuple[int, int] = PORTS,
        host: str = "127.0.0.1",
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
        probe: Probe = can_listen,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.ports = PortAllocator(
            *port_range,
            host=host,
            probe=probe,
            claimed=_CLAIMED_PORTS,
            start=random.randint(*port_range),  # apart from another daemon's (ports.py)
        )
        overlap = ephemeral_overlap(*port_range)
        if overlap is not None:
            log.warning(
                "ports %d-%d overlap the kernel's ephemeral range in %d-%d "
                "(net.ipv4.ip_local_port_range): an outgoing connection may take an "
                "instance's port before the app binds it; choose ports outside it",
                *port_range,
                *overlap,
            )
        self._log_max_bytes = log_max_bytes
        self._log_backups = log_backups
        self._live: dict[str, _Watched] = {}
        self._callbacks: list[ExitCallback] = []
        self._exits: OrderedDict[str, ExitReport] = OrderedDict()
        self._closed = False

    def __repr__(self) -> str:
        return f"<ProcessRuntime {len(self._live)} instances, {self.ports!r}>"

    # -- the Runtime interface -------------------------------------------------

    async def start(self, release: Release, n: int) -> list[Instance]:
        """Start `n` instances; if one cannot start, or one already exited,
        stop those that did and raise (InstanceExited for an exit)."""
        started: list[_Watched] = []
        gone: _Watched | None = None
        try:
            while len(started) < n and gone is None:
                started.append(await self._start_one(release))
                await asyncio.sleep(0)  # let the exit watchers report
                gone = _first_exit(started)
        except Exception:
            await self._stop_all(started)
            raise
        if gone is not None:
            await self._stop_all(started)  # also completes the log that says why
            report = self._report(gone)
            raise InstanceExited(gone.instance.id, gone.returncode, len(started), n, report)
        return [watched.instance for watched in started]

    async def stop(self, instance: Instance, grace: float) -> None:
        await self.terminate(instance, grace)

    def instances(self, service: str | None = None) -> list[Instance]:
        found = (watched.instance for watched in self._live.values())
        return [i for i in found if service is None or i.service == service]

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    async def adopt(self, instances: list[Instance]) -> list[Instance]:
        adopted = [self._adopt_one(instance) for instance in instances]
        return [instance for instance in adopted if instance is not None]

    def exit_report(self, instance: Instance) -> ExitReport | None:
        return self._exits.get(instance.id)

    def port_owner(self, instance: Instance) -> PortOwner:
        return owner.port_owner(instance)

    # -- beyond the interface --------------------------------------------------

    async def terminate(self, instance: Instance, grace: float) -> int | None:
        """`stop`, returning how the process ended: its exit code, -N for signal N,
        None when unknown (adopted, or not ours / already gone)."""
        watched = self._live.get(instance.id)
        if watched is None:
            return None  # never ours, or already exited and forgotten: nothing to stop
        if watched.stopping is None:
            watched.stopping = asyncio.create_task(self._stop(watched, grace))
        # Shielded: a stop once begun runs to the end even if this caller is
        # cancelled, or a process could be left half-stopped with its port held.
        return await asyncio.shield(watched.stopping)

    async def kill_stale(
        self, instances: list[Instance], grace: float = STOP_GRACE
    ) -> list[Instance]:
        """Stop the records whose process still runs (pid and start time match)
        but that the caller does not want, e.g. after the daemon was killed
        mid-deploy. Returns those it stopped."""
        stale = await self.adopt(instances)
        await asyncio.gather(*(self.stop(instance, grace) for instance in stale))
        return stale

    async def close(self) -> None:
        """Stop watching and capturing. Instances keep running: the daemon
        decides their fate (a restart adopts them)."""
        self._closed = True
        watched_all = list(self._live.values())
        self._live.clear()
        tasks = [task for watched in watched_all for task in watched.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watched in watched_all:  # a task cancelled before it ran has no `finally`
            watched.close_output()
            # Whoever adopts the instance holds its port again; until then the
            # probe sees it, as it would from another daemon process.
            self.ports.release(watched.instance.port)

    # -- starting ----------------------------------------------------------------

    async def _stop_all(self, started: list[_Watched]) -> None:
        # The caller of start() never sees these, so nobody else would ever stop them.
        await asyncio.gather(*(self.stop(watched.instance, 0) for watched in started))

    async def _start_one(self, release: Release) -> _Watched:
        if self._closed:
            raise RuntimeStartError("the runtime is closed")
        instance_id = f"{release.service}-{release.version}-{secrets.token_hex(3)}"
        with contextlib.ExitStack() as undo:
            port = self.ports.take()
            undo.callback(self.ports.release, port)
            output = self._open_log(release, instance_id)
            undo.callback(output.close)
            spawned = await spawn(release, port)
            undo.pop_all()
        pid = spawned.child.pid
        instance = Instance(
            id=instance_id,
            service=release.service,
            version=release.version,
            port=port,
            host=self.host,
            pid=pid,
            pid_started=procfs.start_time(pid),  # None only if it already died
        )
        watched = _Watched(instance, spawned.child, pipe=spawned.pipe, log=output)
        watched.pump = asyncio.create_task(_capture(watched, spawned.output))
        watched.tasks = [watched.pump, asyncio.create_task(self._watch(watched))]
        self._live[instance.id] = watched
        return watched

    def _open_log(self, release: Release, instance_id: str) -> RotatingLog:
        parts = (release.service, release.version, f"{instance_id}.log")
        path = self.state_dir.joinpath("logs", *map(_path_safe, parts))
        try:
            return RotatingLog(path, self._log_max_bytes, self._log_backups)
        except OSError as exc:
            raise RuntimeStartError(f"cannot open the log of {instance_id}: {exc}") from exc

    # -- watching ----------------------------------------------------------------

    async def _watch(self, watched: _Watched) -> None:
        assert watched.instance.pid is not None
        await until_exit(watched.instance.pid, watched.alive)
        # Our child is a zombie now (or reaped by alive()): wait() returns at once.
        self._exited(watched, watched.child.wait() if watched.child else None)
        if watched.stopping is None and watched.pump is not None:
            # Its last words (a traceback) may still be in the pipe: whoever
            # hears of the crash reads them in its ExitReport.
            await asyncio.wait([watched.pump], timeout=LOG_FLUSH_TIMEOUT)
        if watched.stopping is None:  # asked for: stop() finishes the bookkeeping, nobody is told
            self._crashed(watched)

    def _exited(self, watched: _Watched, code: int | None) -> None:
        watched.returncode = code
        watched.exited.set()
        # What the app left behind would be orphans now. Its pid names the
        # group and is not reused while any member is alive.
        _signal_group(watched.instance.pid, signal.SIGKILL)

    def _crashed(self, watched: _Watched) -> None:
        watched.instance.state = "crashed"
        self._forget(watched)
        report = self._report(watched)
        log.warning("instance %s exited on its own (%s)", watched.instance.id, report.how)
        code = watched.returncode
        for callback in list(self._callbacks):
            try:
                callback(watched.instance, code)
            except Exception:  # one broken listener must not silence the others
                log.exception("on_exit callback %r failed", callback)

    def _forget(self, watched: _Watched) -> None:
        self._live.pop(watched.instance.id, None)
        self.ports.release(watched.instance.port)

    def _report(self, watched: _Watched) -> ExitReport:
        """Remember how `watched` ended, with the last lines of its log as they are now."""
        path = watched.log.path if watched.log is not None else None
        lines = tail(path, TAIL_LINES) if path is not None else ()
        report = ExitReport(watched.instance.id, watched.returncode, path, lines)
        self._exits[report.instance_id] = report
        while len(self._exits) > EXITS_KEPT:
            self._exits.popitem(last=False)
        return report

    # -- stopping ----------------------------------------------------------------

    async def _stop(self, watched: _Watched, grace: float) -> int | None:
        instance = watched.instance
        if not watched.exited.is_set():
            self._signal(watched, signal.SIGTERM)
            if not await _wait(watched.exited, grace):
                if grace > 0:  # zero: the caller wanted it gone at once
                    log.warning("instance %s ignored SIGTERM for %gs: SIGKILL", instance.id, grace)
                self._signal(watched, signal.SIGKILL)
                if not await _wait(watched.exited, KILL_TIMEOUT):
                    log.error("instance %s survived SIGKILL for %gs", instance.id, KILL_TIMEOUT)
        await self._until_port_free(instance)
        if watched.pump is not None:  # so the log is complete when stop returns
            await asyncio.wait([watched.pump], timeout=LOG_FLUSH_TIMEOUT)
        instance.state = "stopped"
        self._forget(watched)
        return watched.returncode

    def _signal(self, watched: _Watched, sig: signal.Signals) -> None:
        # An unreaped child's pid cannot be reused; an adopted one's can, so
        # it must still be the process that started at pid_started.
        if watched.child is not None or watched.alive():
            _signal_group(watched.instance.pid, sig)

    async def _until_port_free(self, instance: Instance) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PORT_FREE_TIMEOUT
        while not self.ports.is_free(instance.port):
            if loop.time() >= deadline:
                log.warning("port %d of %s still busy after it stopped", instance.port, instance.id)
                return
            await asyncio.sleep(PORT_POLL)

    # -- adopting ----------------------------------------------------------------

    def _adopt_one(self, instance: Instance) -> Instance | None:
        known = self._live.get(instance.id)
        if known is not None:
            return known.instance
        watched = _Watched(instance, None)
        if not watched.alive():
            return None
        self._live[instance.id] = watched
        self.ports.hold(instance.port)
        watched.tasks.append(asyncio.create_task(self._watch(watched)))
        return instance


def _first_exit(started: list[_Watched]) -> _Watched | None:
    """A batch stops at its first exit. A command that exits at once would
    otherwise be started `wanted` times over (its port is free again at
    each exit), and the caller hears of none of them until the batch ends:
    `instances = 100000` once spawned 41,699 processes so."""
    return next((watched for watched in started if watched.exited.is_set()), None)


async def _capture(watched: _Watched, output: asyncio.StreamReader) -> None:
    assert watched.log is not None
    try:
        await pump(output, watched.log)
    finally:  # at EOF (the app and all it started are gone) or on close()
        watched.close_output()


def _signal_group(pid: int | None, sig: signal.Signals) -> None:
    if pid is None:
        return
    # Gone already, or (EPERM) the group is now only a zombie leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to `timeout` for `event`; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


def _path_safe(name: str) -> str:
    # Service and version become directory names: no separators, no "..".
    safe = _UNSAFE_IN_PATH.sub("_", name)
    return "_" if safe in (".", "..") else safe
