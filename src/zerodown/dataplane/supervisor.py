"""The embedded data plane over several worker processes (`[proxy] workers = N`).

The supervisor, in the daemon's process, opens the listening sockets and
holds them for as long as it serves; each worker inherits its own share
(sockets.py: one SO_REUSEPORT socket per worker and address, so the kernel
spreads connections evenly, and none is ever closed while queued clients
wait on it).

The supervisor keeps the routing table and the only copy of health that
counts. Its own ProxyServer accepts nothing: it holds the table, runs the
active checks (once for all workers, not N times) and takes the passive
ejections workers report; every verdict goes to every worker, so all eject
and restore a target together. A table change is applied here first (a bad
one is refused before any worker sees it), then by each worker atomically.
Stats are the workers' counters merged, with the state from here; the last
counters read from a worker that died are kept (counters.py), so totals
never go back. Every worker is read every STATS_POLL seconds for that.

A worker that dies is started again, after a short backoff, with the table
and health in force; the listening sockets never closed, so clients at most
queue in the backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any, Final

from zerodown.dataplane.base import DrainResult, ListeningDataPlane
from zerodown.dataplane.channel import Channel, ChannelClosed, Message, RemoteError
from zerodown.dataplane.counters import RetiredCounters
from zerodown.dataplane.merge import Tally, answered_counts, merge_worker_stats, target_keys
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.dataplane.sockets import ListenSet
from zerodown.dataplane.worker import ANSWERS_EVERY
from zerodown.errors import DataPlaneError
from zerodown.proxy import tls
from zerodown.proxy.health import HealthShare
from zerodown.proxy.ratelimit import create_table_file
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.sticky import new_key
from zerodown.proxy.target import Target
from zerodown.routing import RoutingTable
from zerodown.stats import Stats

log = logging.getLogger("zerodown.dataplane")

START_TIMEOUT: Final = 30.0  # a worker must be accepting within this
REQUEST_TIMEOUT: Final = 10.0  # apply, stats: answered at once by a live worker
STOP_GRACE: Final = 5.0  # beyond the shutdown timeout, before a worker is killed
RESTART_BASE: Final = 0.1  # seconds before the first restart of a worker...
RESTART_MAX: Final = 5.0  # ...doubling per crash up to this
STABLE_AFTER: Final = 30.0  # a worker that ran this long resets the backoff
# How often each worker's counters are read, so that a worker killed without
# warning loses at most this many seconds of counts. A read is one small
# message each way per worker: cheap beside the traffic it counts.
STATS_POLL: Final = 1.0


class WorkerProcess:
    """One worker: its process, its channel and its restart backoff."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.started_at = 0.0
        self.crashes = 0
        self.ready = False
        # One generation per process; `counted` is the last tally read from
        # the current one, added to the retired counters when it ends.
        self.generation = 0
        self.counted: Tally | None = None
        self.counted_read = 0  # which read (supervisor-wide number) `counted` came from

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<WorkerProcess {self.index} pid={pid} ready={self.ready}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def request(self, op: str, wait: float = REQUEST_TIMEOUT, **fields: Any) -> Any:
        if self.channel is None or not self.ready:
            raise ChannelClosed(f"worker {self.index} is not running")
        return await self.channel.request(op, wait, **fields)

    def notify(self, op: str, **fields: Any) -> None:
        if self.channel is not None and self.ready:
            self.channel.notify(op, **fields)


class MultiWorkerDataPlane(ListeningDataPlane):
    def __init__(self, settings: ProxySettings, table: RoutingTable | None, workers: int) -> None:
        if workers < 2:
            raise ValueError("a multi-worker data plane needs at least 2 workers")
        if not settings.sticky_key:
            # One key for all workers, or a cookie one signs the others ignore.
            settings = dataclasses.replace(settings, sticky_key=new_key())
        self.settings = settings
        self.server = ProxyServer(settings, table, on_health=self._broadcast)
        self.workers = [WorkerProcess(i) for i in range(workers)]
        # How long a live worker may take to answer apply or stats before it
        # counts as stuck and is replaced.
        self.request_timeout = REQUEST_TIMEOUT
        self.stats_poll = STATS_POLL
        self.retired = RetiredCounters()
        self._reads = 0  # reads of the workers' counters so far
        # (worker index, generation) -> its responses below 500 per (service, target) at the
        # last read: their growth is how health here learns a target answers.
        self._answered: dict[tuple[int, int], dict[tuple[str, str], int]] = {}
        self.stopping = False
        self.listening = ListenSet([], workers)
        self._keepers: set[asyncio.Task[None]] = set()  # restart loops, cancelled on stop
        self._readers: set[asyncio.Task[None]] = set()  # channels, read until the worker exits
        self._rate_table: str | None = None

    def __repr__(self) -> str:
        return f"<MultiWorkerDataPlane {self.addresses} workers={self.workers!r}>"

    # -- starting and stopping -------------------------------------------------

    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        # One rate-limit table for all workers (proxy/ratelimit.py); a sparse
        # file, so it costs memory only once a service limits rates.
        self._rate_table = create_table_file()
        self.listening = ListenSet.open(listen, len(self.workers))
        results = await asyncio.gather(
            *(self._spawn(w) for w in self.workers), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop(0)
            raise DataPlaneError(f"proxy workers did not start: {failed[0]}")
        for worker in self.workers:
            self._watch(worker)
        self._keep(self._poll_counters())

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.listening.addresses

    @property
    def sockets(self) -> list[socket.socket]:
        return self.listening.sockets

    @property
    def pids(self) -> list[int]:
        return [
            w.process.pid
            for w in self.workers
            if w.process is not None and w.process.returncode is None
        ]

    async def stop(self, timeout: float | None = None) -> None:
        """Stop every worker gracefully (in parallel), then close the sockets."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self.stopping = True
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*(self._stop_worker(w, timeout) for w in self.workers))
        for worker in self.workers:
            worker.ready = False  # the keepers that would have said so were cancelled
        self.listening.close()
        await self.server.stop(0)
        if self._rate_table is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._rate_table)

    async def _stop_worker(self, worker: WorkerProcess, timeout: float) -> None:
        process = worker.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ChannelClosed, RemoteError, TimeoutError):
            await worker.request("stop", timeout + STOP_GRACE, timeout=timeout)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            log.warning("proxy worker %s did not exit; killing it", worker.pid)
            process.kill()
            await process.wait()
        if worker.channel is not None:
            worker.channel.close()

    # -- a worker's life -------------------------------------------------------

    async def _spawn(self, worker: WorkerProcess) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [s.fileno() for s in self.listening.for_worker(worker.index)]
        command = [sys.executable, "-m", "zerodown.dataplane.worker"]
        command += ["--control-fd", str(theirs.fileno())]
        for fd in fds:
            command += ["--listen-fd", str(fd)]
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *command, pass_fds=[theirs.fileno(), *fds], stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            await self._hand_start(worker, ours)
        except BaseException:
            # Failed, timed out or cancelled (a SIGTERM during start-up): a
            # half-started worker is killed and reaped here, so none outlives
            # its supervisor and stop() finds nothing left to wait for.
            if worker.process.returncode is None:
                worker.process.kill()
            await worker.process.wait()
            raise

    async def _hand_start(self, worker: WorkerProcess, ours: socket.socket) -> None:
        """Open the worker's channel and give it the table and health in force."""
        worker.channel = await Channel.over(ours, self._from_worker)
        reading = asyncio.get_running_loop().create_task(worker.channel.serve())
        self._readers.add(reading)
        reading.add_done_callback(self._readers.discard)
        worker.started_at = time.monotonic()
        table = self.server.table
        await worker.channel.request("start", START_TIMEOUT, **self._start_message(table))
        # What changed while it started, before it joins the broadcasts (no
        # await in between: nothing can slip through; the channel keeps order).
        if self.server.table is not table:
            worker.channel.notify("apply", table=self.server.table.model_dump(mode="json"))
        for service, address, share in self._health():
            worker.channel.notify("health", service=service, address=address, share=share)
        worker.ready = True

    def _start_message(self, table: RoutingTable) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "rate_table": self._rate_table,
            "table": table.model_dump(mode="json"),
            "health": self._health(),
        }

    def _health(self) -> list[tuple[str, str, list[Any]]]:
        return [
            (service.name, target.address, list(target.health.shared()))
            for service in self.server.services.values()
            for target in service.targets()
        ]

    def _watch(self, worker: WorkerProcess) -> None:
        self._keep(self._keep_running(worker))

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` until the data plane stops (stop() cancels it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._keepers.add(task)
        task.add_done_callback(self._keepers.discard)

    async def _keep_running(self, worker: WorkerProcess) -> None:
        """Start `worker` again whenever it dies, until the data plane stops."""
        while not self.stopping:
            assert worker.process is not None
            code = await worker.process.wait()
            worker.ready = False
            if worker.channel is not None:
                worker.channel.close()
            self._retire(worker)
            if self.stopping:
                return
            delay = self._restart_delay(worker)
            log.error(
                "proxy worker %d (pid %s) exited with %s; restarting in %.1fs",
                worker.index,
                worker.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn(worker)
            except (OSError, ChannelClosed, RemoteError, TimeoutError) as exc:
                log.error("proxy worker %d did not start again: %s", worker.index, exc)
                worker.started_at = time.monotonic()

    def _retire(self, worker: WorkerProcess) -> None:
        """The worker's generation ended: its last counters join the retired ones."""
        worker.generation += 1  # a read of the old generation still on its way is dropped
        if worker.counted is not None:
            self.retired.add(worker.counted)
        worker.counted = None

    async def _poll_counters(self) -> None:
        while True:
            await asyncio.sleep(self.stats_poll)
            await self._read_counters()

    async def _read_counters(self) -> list[Stats]:
        """Every running worker's stats, each kept as its generation's last counters."""
        self._reads += 1
        read, generations = self._reads, [w.generation for w in self.workers]
        answers = [(w, Stats.model_validate(s)) for w, s in await self._ask("stats") if s]
        self._note_answers(answers)
        for worker, snapshot in answers:
            # Kept only if the generation it counts is still running (else its
            # last counters are retired already) and no later read (a poll and
            # a stats() overlap) has been kept: a kept count never goes back.
            if worker.generation == generations[worker.index] and read > worker.counted_read:
                worker.counted, worker.counted_read = Tally.of(snapshot), read
        return [snapshot for _, snapshot in answers]

    def _note_answers(self, answers: list[tuple[WorkerProcess, Stats]]) -> None:
        """Tell health which targets answered since the last read of each worker.

        The checks run here, where no request is served, so a busy target's
        timed-out checks would never be excused (proxy/health.py). A target
        answered when some worker's count of its responses below 500 grew
        since that worker's (same generation's) last read; we hear of it up
        to one poll late, which widens the excuse by as much.
        """
        now = time.monotonic()
        live = {(w.index, w.generation) for w in self.workers}
        known = {key: counts for key, counts in self._answered.items() if key in live}
        for worker, snapshot in answers:
            key = (worker.index, worker.generation)
            before = known.get(key, {})
            known[key] = counts = answered_counts(snapshot)
            for (service, address), n in counts.items():
                if n > before.get((service, address), 0):
                    self.server.heard_answers(service, address, now, self.stats_poll)
        self._answered = known

    @staticmethod
    def _restart_delay(worker: WorkerProcess) -> float:
        # Not runtime.Backoff: the data plane sits below the runtime, and a
        # worker is never given up on (there is no crash-loop verdict to reach).
        if time.monotonic() - worker.started_at >= STABLE_AFTER:
            worker.crashes = 0
        worker.crashes += 1
        return float(min(RESTART_MAX, RESTART_BASE * 2 ** (worker.crashes - 1)))

    # -- health: one verdict for all workers -----------------------------------

    def _from_worker(self, op: str, message: Message) -> None:
        if op == "answered":
            self._worker_answers(message["targets"])
        elif op == "health":
            self._worker_verdict(message["service"], message["address"], message["share"])
        else:
            raise ValueError(f"a worker may not ask {op!r}")

    def _worker_answers(self, targets: list[list[str]]) -> None:
        """A worker's targets that answered lately (worker.ANSWERS_EVERY): health
        hears of it at once, not at the next read of the counters, so a busy
        target's timed-out checks are excused before `fall` of them add up."""
        now = time.monotonic()
        for service, address in targets:
            self.server.heard_answers(service, address, now, ANSWERS_EVERY)

    def _worker_verdict(self, service: str, address: str, values: list[Any]) -> None:
        """A worker decided something about a target (passive health); decide for all.

        An ejection stands if the target is up here (another worker may have
        ejected it a moment before). A return at the end of an ejection is
        taken only where no active checks run: with checks, a passing check
        here brings it back.
        """
        share = HealthShare(*values)
        located = self.server.locate(service, address)
        if located is None:
            return  # gone from the table since the worker decided
        found, target = located
        current = target.health.state
        ejection = share.state == "ejected" and current == "up"
        timed_return = share.state == "up" and current == "ejected" and found.spec.health is None
        if ejection or timed_return:
            self.server.adopt_health(service, address, share)
            self._broadcast(service, target)

    def _broadcast(self, service: str, target: Target) -> None:
        """Tell every worker the verdict on `target`: ours (checks, timed returns) or adopted."""
        share = list(target.health.shared())
        for worker in self.workers:
            worker.notify("health", service=service, address=target.address, share=share)

    # -- the DataPlane interface -----------------------------------------------

    async def apply(self, table: RoutingTable) -> None:
        self.server.apply_now(table)  # refused here: no worker saw it
        document = table.model_dump(mode="json")
        await self._each("apply", table=document)

    def routing(self) -> RoutingTable:
        return self.server.routing()

    async def reload_tls(self) -> None:
        # Checked here first: a worker that failed to reload would be replaced.
        if self.settings.tls is not None:
            tls.check_all(self.settings.tls)
            await self._each("reload_tls")

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        started = time.monotonic()
        await self.server.drain(service, address, 0)
        results = await self._each(
            "drain", timeout + STOP_GRACE, service=service, address=address, timeout=timeout
        )
        done = [DrainResult(**r) for r in results if isinstance(r, dict)]
        return DrainResult(
            service,
            address,
            all(r.completed for r in done),
            sum(r.cancelled for r in done),
            time.monotonic() - started,
        )

    async def stats(self) -> Stats:
        """The workers' counters summed: as read now, or last read of one that did
        not answer, plus those of generations that ended (never less than before).
        """
        await self._read_counters()
        view = self.server.stats()
        self.retired.keep_only(target_keys(view))
        counted = [w.counted for w in self.workers if w.counted is not None]
        merged = merge_worker_stats(view, [*counted, self.retired.tally()])
        return merged.model_copy(update={"workers": sum(1 for w in self.workers if w.ready)})

    async def worker_stats(self) -> list[Stats]:
        """Each running worker's own stats, unmerged (what it knows and counted)."""
        return await self._read_counters()

    async def prometheus(self) -> str:
        return render_prometheus(await self.stats())

    async def _each(self, op: str, wait: float | None = None, **fields: Any) -> list[Any]:
        """Ask every running worker; one that is dead or dies meanwhile is left out.

        A worker started later gets the table and health in force then, so
        missing one now loses nothing.
        """
        return [reply for _, reply in await self._ask(op, wait, **fields)]

    async def _ask(
        self, op: str, wait: float | None = None, **fields: Any
    ) -> list[tuple[WorkerProcess, Any]]:
        """`_each`, with the worker each reply came from."""
        asked = [w for w in self.workers if w.ready]
        replies = await asyncio.gather(
            *(w.request(op, wait or self.request_timeout, **fields) for w in asked),
            return_exceptions=True,
        )
        for worker, reply in zip(asked, replies, strict=True):
            if isinstance(reply, (RemoteError, TimeoutError)):
                self._replace(worker, f"{op} failed: {type(reply).__name__}: {reply}")
        return [
            (worker, reply)
            for worker, reply in zip(asked, replies, strict=True)
            if not isinstance(reply, BaseException)
        ]

    def _replace(self, worker: WorkerProcess, why: str) -> None:
        """A live worker that cannot obey is killed; it restarts on the table in force.

        Raising instead would tell the orchestrator the table was refused,
        while here and in the other workers it is already in force.
        """
        log.error("proxy worker %d (pid %s): %s; replacing it", worker.index, worker.pid, why)
        worker.ready = False
        if worker.process is not None and worker.process.returncode is None:
            worker.process.kill()
