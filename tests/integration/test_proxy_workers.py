"""The multi-worker data plane through real sockets and real worker processes.

A supervisor (this process) holds the listening socket, the table and the one
health verdict; two `python -m zerodown.dataplane.worker` processes inherit
the socket and serve. Every wait is a condition polled up to a deadline;
assertions count requests and read what each worker says it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from harness import Backend, Request, Response, backends, ok, request, run, service, until
from prometheus_text import total, value
from zerodown.dataplane.merge import Tally
from zerodown.dataplane.supervisor import MultiWorkerDataPlane
from zerodown.errors import DataPlaneError
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import HealthSpec, PassiveHealthSpec, RoutingTable, ServiceSpec
from zerodown.stats import Stats

WORKERS = 2
START_DEADLINE = 8.0  # a worker process is a fresh interpreter; the machine may be busy


# -- helpers ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def plane(*services: ServiceSpec) -> AsyncIterator[MultiWorkerDataPlane]:
    """A MultiWorkerDataPlane with 2 workers on 127.0.0.1:0; stopped on exit."""
    data_plane = MultiWorkerDataPlane(ProxySettings(), RoutingTable(services=services), WORKERS)
    await data_plane.start(["127.0.0.1:0"])
    try:
        yield data_plane
    finally:
        await data_plane.stop(1.0)


def port_of(data_plane: MultiWorkerDataPlane) -> int:
    return data_plane.addresses[0][1]


def document(stats: Stats | dict[str, Any]) -> dict[str, Any]:
    """The stats as JSON, as /v1/stats serves them (a worker's own reply already is)."""
    return stats.model_dump(mode="json") if isinstance(stats, Stats) else stats


def targets(stats: Stats | dict[str, Any], pool: str = "stable") -> dict[str, Any]:
    """address -> target entry of service web's pool, from a stats document."""
    found: dict[str, Any] = document(stats)["services"]["web"]["pools"][pool]["targets"]
    return found


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """`until` for a condition that has to ask the workers (an async call)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


async def every_worker_says(data_plane: MultiWorkerDataPlane, address: str, health: str) -> bool:
    snapshots = await data_plane.worker_stats()
    return len(snapshots) == WORKERS and all(
        targets(s)[address]["health"] == health for s in snapshots
    )


async def served_by(port: int, count: int) -> Counter[str]:
    """X-Backend of `count` requests, each on a new connection (any worker may accept it)."""
    names: Counter[str] = Counter()
    for _ in range(count):
        response = await request(port)
        assert response.status == 200, response
        names[response.header("x-backend") or "?"] += 1
    return names


class Switchable:
    """A backend whose /health status and whose answer to everything else a test sets."""

    def __init__(self, name: str, health: int = 200, status: int = 200) -> None:
        self.health = health
        self.status = status
        self.slow = 0.0  # seconds /slow takes
        self.backend = Backend(name=name, handler=self.handle)

    @property
    def address(self) -> str:
        return self.backend.address

    async def handle(self, req: Request) -> bytes:
        name = self.backend.name
        if req.path == "/health":
            return ok(b"health", status=self.health)
        if req.path == "/slow":
            await asyncio.sleep(self.slow)
        return ok(name.encode(), status=self.status, headers={"X-Backend": name})

    def checks(self) -> int:
        return sum(1 for r in self.backend.requests if r.path == "/health")

    def traffic(self) -> int:
        return sum(1 for r in self.backend.requests if r.path != "/health")


@contextlib.asynccontextmanager
async def switchables(*names: str, **kwargs: Any) -> AsyncIterator[list[Switchable]]:
    started = [Switchable(n, **kwargs) for n in names]
    for s in started:
        await s.backend.start()
    try:
        yield started
    finally:
        for s in started:
            await s.backend.stop()


# -- serving and stats ----------------------------------------------------------------


def test_both_workers_serve_and_stats_sum_their_counters() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            port = port_of(dp)
            assert len(dp.pids) == WORKERS
            assert len(set(dp.pids)) == WORKERS
            assert os.getpid() not in dp.pids
            assert all(w.ready for w in dp.workers)

            # Concurrent batches until both workers have accepted something (the
            # kernel picks the worker), so the totals below really are sums.
            sent, statuses = 0, Counter[int]()
            names: Counter[str] = Counter()
            while sent < 400:
                responses = await asyncio.gather(*(request(port) for _ in range(10)))
                sent += len(responses)
                statuses.update(r.status for r in responses)
                names.update(r.header("x-backend") or "?" for r in responses)
                per_worker = [
                    sum(t["requests"] for t in targets(s).values()) for s in await dp.worker_stats()
                ]
                if all(n > 0 for n in per_worker):
                    break
            assert statuses == {200: sent}
            assert set(names) == {"a", "b"}, names
            assert len(a.requests) + len(b.requests) == sent
            assert all(n > 0 for n in per_worker), per_worker
            assert sum(per_worker) == sent

            stats = document(await dp.stats())
            assert stats["workers"] == WORKERS
            entries = targets(stats)
            assert set(entries) == {a.address, b.address}
            assert entries[a.address]["requests"] == len(a.requests)
            assert entries[b.address]["requests"] == len(b.requests)
            assert entries[a.address]["responses"]["2xx"] == len(a.requests)
            assert entries[a.address]["latency"]["count"] == len(a.requests)
            totals = stats["services"]["web"]["pools"]["stable"]["totals"]
            assert totals["requests"] == sent
            assert totals["responses"]["2xx"] == sent
            assert totals["in_flight"] == 0
            assert totals["targets"] == 2
            assert totals["available"] == 2
            assert all(e["state"] == "ready" and e["health"] == "up" for e in entries.values())

            text = await dp.prometheus()
            labels = {"service": "web", "pool": "stable", "version": ""}
            for backend in (a, b):
                requests = value(text, "zerodown_requests_total", **labels, target=backend.address)
                assert requests == len(backend.requests), text
                assert value(text, "zerodown_target_up", **labels, target=backend.address) == 1

    run(main())


# -- apply ------------------------------------------------------------------------------


def test_apply_reaches_every_worker() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            port = port_of(dp)
            assert set(await served_by(port, 4)) == {"a", "b"}

            await dp.apply(RoutingTable(services=(service(b.address),)))
            assert dp.routing().services[0].stable.targets[0].address == b.address
            snapshots = await dp.worker_stats()
            assert len(snapshots) == WORKERS
            for snapshot in snapshots:
                assert set(targets(snapshot)) == {b.address}

            before = len(a.requests)
            assert await served_by(port, 20) == {"b": 20}
            assert len(a.requests) == before
            assert set(targets(await dp.stats())) == {b.address}

    run(main())


def refused_table(current: RoutingTable) -> RoutingTable:
    """`current` with an unknown balancer and a weight change: valid JSON, but no
    Service can be built from it (model_copy skips validation, as a driver bug would)."""
    spec = current.services[0]
    bad_targets = tuple(t.model_copy(update={"weight": 7}) for t in spec.stable.targets)
    bad = spec.model_copy(
        update={
            "balance": "no_such_algorithm",
            "stable": spec.stable.model_copy(update={"targets": bad_targets}),
        }
    )
    return current.model_copy(update={"services": (bad,)})


def test_a_refused_table_reaches_no_worker() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            port = port_of(dp)
            before = dp.routing()

            with pytest.raises(DataPlaneError, match="no_such_algorithm"):
                await dp.apply(refused_table(before))

            assert dp.routing() is before
            snapshots = await dp.worker_stats()
            assert len(snapshots) == WORKERS
            for snapshot in snapshots:
                entries = targets(snapshot)
                assert set(entries) == {a.address, b.address}
                assert all(e["weight"] == 1 and e["state"] == "ready" for e in entries.values())
            assert set(await served_by(port, 10)) == {"a", "b"}
            # The data plane still takes a good table afterwards.
            await dp.apply(RoutingTable(services=(service(b.address),)))
            assert await served_by(port, 6) == {"b": 6}

    run(main())


def test_a_refused_table_leaves_the_supervisor_view_unchanged() -> None:
    # The supervisor's stats are the view merged stats report state from; a
    # refused table must not have half-applied itself there (weights, states).
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            with pytest.raises(DataPlaneError):
                await dp.apply(refused_table(dp.routing()))
            entries = targets(await dp.stats())
            assert {e["weight"] for e in entries.values()} == {1}, entries

    run(main())


# -- health: one verdict for all workers ---------------------------------------------------


def test_passive_ejection_by_one_worker_is_obeyed_by_all() -> None:
    async def main() -> None:
        async with switchables("a", "b") as (a, b):
            a.status = 500
            passive = PassiveHealthSpec(consecutive_errors=2, base_ejection_time=30)
            async with plane(service(a.address, b.address, passive=passive)) as dp:
                port = port_of(dp)

                # Traffic until some worker has seen 2 errors from a in a row and ejected it.
                for _ in range(40):
                    assert (await request(port)).status in (200, 500)
                    snapshots = await dp.worker_stats()
                    if any(targets(s)[a.address]["health"] == "ejected" for s in snapshots):
                        break
                else:
                    raise AssertionError("no worker ejected a")
                # No more traffic: the others can only learn it from the supervisor.
                await eventually(
                    lambda: every_worker_says(dp, a.address, "ejected"),
                    "a ejected in every worker",
                    5.0,
                )
                stats = await dp.stats()
                assert targets(stats)[a.address]["health"] == "ejected"
                assert targets(stats)[a.address]["serving"] is False
                assert targets(stats)[a.address]["ejections"] >= 1
                assert targets(stats)[b.address]["health"] == "up"

                before = a.traffic()
                assert await served_by(port, 20) == {"b": 20}
                assert a.traffic() == before

    run(main())


FAST_CHECKS = HealthSpec(path="/health", interval=0.05, timeout=0.5, rise=1, fall=1)


def test_active_checks_run_once_in_the_supervisor_and_every_worker_obeys() -> None:
    async def main() -> None:
        async with switchables("a", "b") as (a, b):
            spec = service(a.address, b.address, health=FAST_CHECKS, passive=None)
            async with plane(spec) as dp:
                port = port_of(dp)
                loop = asyncio.get_running_loop()
                await until(lambda: a.checks() > 0, "first check of a", START_DEADLINE)

                # Checks over a measured window: one checker's worth, not one per process.
                first, started = a.checks(), loop.time()
                await until(lambda: a.checks() >= first + 20, "20 more checks of a", 5.0)
                window, counted = loop.time() - started, a.checks() - first
                assert counted <= window / FAST_CHECKS.interval + 2, (counted, window)
                assert set(await served_by(port, 6)) == {"a", "b"}

                a.health = 500
                await eventually(
                    lambda: every_worker_says(dp, a.address, "down"), "a down in every worker", 5.0
                )
                assert targets(await dp.stats())[a.address]["health"] == "down"
                before = a.traffic()
                assert await served_by(port, 20) == {"b": 20}
                assert a.traffic() == before

                a.health = 200
                await eventually(
                    lambda: every_worker_says(dp, a.address, "up"), "a up in every worker", 5.0
                )
                assert set(await served_by(port, 10)) == {"a", "b"}

    run(main())


# -- a worker that dies ------------------------------------------------------------------


def test_a_killed_worker_is_started_again_with_the_current_table() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            port = port_of(dp)
            victim, survivor = dp.workers
            old_process = victim.process
            old_pid, survivor_pid = victim.pid, survivor.pid
            assert old_process is not None
            assert old_pid is not None

            os.kill(old_pid, signal.SIGKILL)
            await until(lambda: not victim.ready, "the supervisor sees the worker die", 5.0)
            assert old_process.returncode == -signal.SIGKILL

            # A new table while it is dead: only the live worker can take it now.
            await dp.apply(RoutingTable(services=(service(b.address),)))
            assert not victim.ready
            # New connections meanwhile: the survivor serves its share at once; any
            # the kernel queued for the dead worker's socket wait for its successor.
            # None is refused, reset or lost.
            outcomes = await asyncio.gather(
                *(request(port) for _ in range(20)), return_exceptions=True
            )
            failures = [o for o in outcomes if not isinstance(o, Response) or o.status != 200]
            assert failures == []
            names = Counter(o.header("x-backend") for o in outcomes if isinstance(o, Response))
            assert names == {"b": 20}

            await until(
                lambda: victim.ready and victim.pid not in (None, old_pid),
                "the worker started again",
                START_DEADLINE,
            )
            assert victim.process is not None
            assert victim.process.returncode is None
            assert survivor.pid == survivor_pid
            assert set(dp.pids) == {victim.pid, survivor_pid}

            # It got the table in force, not the one it was started with.
            assert set(targets(await victim.request("stats"))) == {b.address}
            snapshots = await dp.worker_stats()
            assert len(snapshots) == WORKERS
            assert all(set(targets(s)) == {b.address} for s in snapshots)
            # Every one of the 20 was counted by whichever worker served it.
            assert sum(targets(s)[b.address]["requests"] for s in snapshots) == 20
            assert (await dp.stats()).workers == WORKERS
            before = len(a.requests)
            assert await served_by(port, 20) == {"b": 20}
            assert len(a.requests) == before

    run(main())


def requests_in(stats: Stats | dict[str, Any]) -> int:
    return sum(int(t["requests"]) for t in targets(stats).values())


def tallied(tally: Tally | None) -> int | None:
    """Requests in the supervisor's last read of a worker (None: not read yet)."""
    return None if tally is None else sum(c.requests for c in tally.counters.values())


def prometheus_requests(text: str) -> int:
    return int(total(text, "zerodown_requests_total"))


async def load_both_workers(dp: MultiWorkerDataPlane) -> int:
    """Send batches until each worker has served some; the number sent.

    Asks each worker directly, so the supervisor's own reads are left alone.
    """
    sent = 0
    while sent < 400:
        responses = await asyncio.gather(*(request(port_of(dp)) for _ in range(10)))
        assert [r.status for r in responses] == [200] * 10
        sent += 10
        counts = [requests_in(await w.request("stats")) for w in dp.workers]
        if all(counts):
            return sent
    raise AssertionError(f"one worker served nothing of {sent}: {counts}")


async def kill_and_wait_restart(dp: MultiWorkerDataPlane, victim: Any) -> None:
    old_pid = victim.pid
    os.kill(old_pid, signal.SIGKILL)
    await until(
        lambda: victim.ready and victim.pid not in (None, old_pid), "restarted", START_DEADLINE
    )


def test_a_killed_workers_counts_stay_in_the_totals() -> None:
    # Its counters die with the process; the supervisor keeps the last it read.
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            sent = await load_both_workers(dp)
            before = await dp.stats()
            assert requests_in(before) == sent
            victim = dp.workers[0]
            assert requests_in(await victim.request("stats")) > 0

            await kill_and_wait_restart(dp, victim)

            after = await dp.stats()
            assert requests_in(after) == sent
            assert requests_in(await victim.request("stats")) == 0  # a new generation
            assert after.workers == WORKERS
            for address in (a.address, b.address):
                kept, was = targets(after)[address], targets(before)[address]
                assert kept["requests"] == was["requests"]
                assert kept["responses"] == was["responses"]
                assert kept["latency"]["count"] == was["latency"]["count"]
                assert kept["in_flight"] == 0
            assert prometheus_requests(await dp.prometheus()) == sent
            # and it counts on from there
            assert (await served_by(port_of(dp), 10)).total() == 10
            assert requests_in(await dp.stats()) == sent + 10
            assert len(a.requests) + len(b.requests) == sent + 10

    run(main())


def test_the_supervisor_polls_counters_so_an_unread_kill_loses_nothing_older() -> None:
    # Nobody asks for stats before the kill: only the supervisor's poll read them.
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            table = RoutingTable(services=(service(a.address, b.address),))
            dp = MultiWorkerDataPlane(ProxySettings(), table, WORKERS)
            dp.stats_poll = 0.05
            await dp.start(["127.0.0.1:0"])
            try:
                sent = await load_both_workers(dp)
                victim = dp.workers[0]
                served = requests_in(await victim.request("stats"))
                await until(
                    lambda: tallied(victim.counted) == served,
                    "the poll read the victim's counters",
                    5.0,
                )
                await kill_and_wait_restart(dp, victim)
                assert requests_in(await dp.stats()) == sent
                assert prometheus_requests(await dp.prometheus()) == sent
            finally:
                await dp.stop(1.0)

    run(main())


# -- drain and stop ------------------------------------------------------------------------


def test_a_stuck_worker_is_replaced_and_gets_the_table() -> None:
    # A worker that is alive but cannot answer (stopped here with SIGSTOP)
    # must not keep routing by an old table: it is killed and started again.
    async def main() -> None:
        async with backends("a", "b") as (a, b), plane(service(a.address, b.address)) as dp:
            stuck, _ = dp.workers
            stuck_pid = stuck.pid
            assert stuck_pid is not None
            dp.request_timeout = 0.5
            os.kill(stuck_pid, signal.SIGSTOP)
            table = RoutingTable(services=(service(b.address),))
            await dp.apply(table)
            assert dp.routing() == table  # in force, though one worker could not answer
            await until(
                lambda: stuck.ready and stuck.pid not in (None, stuck_pid),
                "the stuck worker replaced",
                START_DEADLINE,
            )
            snapshots = await dp.worker_stats()
            assert len(snapshots) == WORKERS
            assert all(set(targets(s)) == {b.address} for s in snapshots)
            assert await served_by(port_of(dp), 10) == {"b": 10}

    run(main())


def test_drain_waits_for_the_slow_request_in_a_worker() -> None:
    async def main() -> None:
        async with switchables("a", "b") as (a, b):
            a.slow = 0.5
            # Only a at first, so the slow request surely lands there.
            async with plane(service(a.address)) as dp:
                port = port_of(dp)
                slow = asyncio.get_running_loop().create_task(request(port, path="/slow"))
                await until(lambda: a.traffic() == 1, "the slow request reached a", 5.0)
                await dp.apply(RoutingTable(services=(service(a.address, b.address),)))
                assert targets(await dp.stats())[a.address]["in_flight"] == 1

                result = await dp.drain("web", a.address, 5.0)

                assert result.completed is True
                assert result.cancelled == 0
                response = await slow
                assert (response.status, response.body) == (200, b"a")
                entries = targets(await dp.stats())
                assert entries[a.address]["state"] == "draining"
                assert entries[a.address]["in_flight"] == 0
                for snapshot in await dp.worker_stats():
                    assert targets(snapshot)[a.address]["state"] == "draining"

                assert await served_by(port, 10) == {"b": 10}
                assert a.traffic() == 1

    run(main())


def test_stop_ends_every_worker_and_closes_the_port() -> None:
    async def main() -> None:
        async with backends("a") as (a,):
            dp = MultiWorkerDataPlane(
                ProxySettings(), RoutingTable(services=(service(a.address),)), WORKERS
            )
            await dp.start(["127.0.0.1:0"])
            port = port_of(dp)
            processes = [w.process for w in dp.workers]
            assert (await request(port)).status == 200

            await dp.stop(1.0)

            for process in processes:
                assert process is not None
                assert process.returncode is not None
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)

    run(main())


def test_after_stop_no_worker_counts_as_running() -> None:
    async def main() -> None:
        async with backends("a") as (a,):
            dp = MultiWorkerDataPlane(
                ProxySettings(), RoutingTable(services=(service(a.address),)), WORKERS
            )
            await dp.start(["127.0.0.1:0"])
            await dp.stop(1.0)
            assert [w.ready for w in dp.workers] == [False] * WORKERS
            assert dp.pids == []
            assert (await dp.stats()).workers == 0
            assert await dp.worker_stats() == []

    run(main())
