"""What a tcp connection counts as, on every data plane (docs/tcp.md): the same
counters from the embedded proxy, HAProxy's `show stat` and nginx's stream log,
so the canary judge reads a tcp service alike through all three.

Targets are the demo echo app (zerodown.demo.echo) in this loop; the bad one
resets every connection after its first line, unanswered (`--reset-rate 1`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from harness import reserved_port, run
from tcp_harness import echoes, free_address, tcp_service
from zerodown.analysis import Criteria, judge, pool_samples
from zerodown.dataplane.base import ListeningDataPlane
from zerodown.dataplane.embedded import EmbeddedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings
from zerodown.demo import echo
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable, ServiceSpec
from zerodown.stats import Stats

CONNECTIONS = 40
COUNTED_WITHIN = 5.0  # seconds: nginx writes its log at most 250 ms after a connection ends
CRITERIA = Criteria(
    confidence=0.95,
    min_error_increase=0.2,
    min_latency_increase=0.1,
    min_latency_shift=0.05,
    min_requests=10,
)

Plane = Callable[[Path, ServiceSpec], ListeningDataPlane]


def embedded(tmp_path: Path, spec: ServiceSpec) -> ListeningDataPlane:
    return EmbeddedDataPlane(ProxySettings(connect_timeout=1.0), RoutingTable(services=(spec,)))


def haproxy(tmp_path: Path, spec: ServiceSpec) -> ListeningDataPlane:
    settings = HaproxySettings(state_dir=tmp_path / "state", stop_timeout=2.0)
    return HaproxyDataPlane(settings, RoutingTable(services=(spec,)))


def nginx(tmp_path: Path, spec: ServiceSpec) -> ListeningDataPlane:
    settings = NginxSettings(state_dir=tmp_path / "state", reload_timeout=5.0)
    return NginxDataPlane(settings, RoutingTable(services=(spec,)))


PLANES = {"embedded": embedded, "haproxy": haproxy, "nginx": nginx}


@contextlib.asynccontextmanager
async def started(plane: ListeningDataPlane, spec: ServiceSpec) -> AsyncIterator[None]:
    # The embedded proxy listens where it is told (the daemon adds a tcp service's
    # `listen`); the drivers render that listener from the table themselves.
    own = isinstance(plane, EmbeddedDataPlane)
    assert spec.listen is not None
    await plane.start([spec.listen if own else f"127.0.0.1:{reserved_port()}"])
    try:
        await plane.apply(RoutingTable(services=(spec,)))
        yield
    finally:
        await plane.stop(2.0)


@contextlib.asynccontextmanager
async def resetting() -> AsyncIterator[str]:
    """A target that resets every connection after its first line."""
    server = await echo.start("127.0.0.1", 0, "bad", reset_rate=1.0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def talk(port: int) -> str:
    """One connection that says a line and waits for the answer, still talking:
    the version that answered, or "dropped" (closed or reset unanswered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"hi\n")
        line = await reader.readline()
    except ConnectionError:
        return "dropped"
    finally:
        writer.close()
    return line.split(b" ")[0].decode() if line else "dropped"


async def counted(plane: ListeningDataPlane, done: Callable[[Stats], bool]) -> Stats:
    """The stats once `done` holds (nginx counts a connection when its log is flushed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COUNTED_WITHIN
    while not done(stats := await plane.stats()):
        if loop.time() > deadline:
            raise AssertionError(f"connections not counted within {COUNTED_WITHIN}s: {stats}")
        await asyncio.sleep(0.1)
    return stats


@pytest.mark.parametrize("name", PLANES)
def test_a_canary_that_drops_connections_is_judged_on_them(name: str, tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        async with echoes("good") as (good,), resetting() as bad:
            spec = tcp_service(port, good, canary=(bad,), weight=50.0)
            plane = PLANES[name](tmp_path, spec)
            async with started(plane, spec):
                seen = Counter([await talk(port) for _ in range(CONNECTIONS)])
                assert set(seen) == {"good", "dropped"}, seen

                def all_counted(stats: Stats) -> bool:
                    canary, stable = pool_samples(stats, "db")
                    return canary.requests + stable.requests == CONNECTIONS

                canary, stable = pool_samples(await counted(plane, all_counted), "db")
        # Every dropped connection is an error of the canary, and only those.
        assert (canary.requests, canary.errors) == (seen["dropped"], seen["dropped"])
        assert (stable.requests, stable.errors) == (seen["good"], 0)
        verdict = judge(canary, stable, CRITERIA)
        assert verdict.verdict == "fail", verdict.reason

    run(main())


@pytest.mark.parametrize("name", PLANES)
def test_a_failed_connect_counts_once_at_its_target(name: str, tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        dead = free_address()
        async with echoes("good") as (good,):
            spec = tcp_service(port, dead, good)
            plane = PLANES[name](tmp_path, spec)
            async with started(plane, spec):
                seen = Counter([await talk(port) for _ in range(10)])
                assert seen == {"good": 10}, seen

                def all_counted(stats: Stats) -> bool:
                    targets = stats.services["db"].pools["stable"].targets
                    return targets[good].responses["2xx"] == 10

                stats = await counted(plane, all_counted)
        targets = stats.services["db"].pools["stable"].targets
        tried = targets[dead]
        # Each try at the dead target failed, and went on to the live one.
        assert tried.requests > 0, tried
        assert tried.retries + tried.failures["connect"] == tried.requests, tried
        assert sum(tried.responses.values()) == 0, tried
        assert targets[good].failures["reset"] == 0
        _, stable = pool_samples(stats, "db")
        assert (stable.requests, stable.errors) == (10 + tried.requests, tried.requests)

    run(main())


@contextlib.asynccontextmanager
async def silent() -> AsyncIterator[str]:
    """A target that reads and never answers (a slow query), nor closes."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def test_a_connection_cut_at_the_drain_deadline_is_cancelled_not_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        port = reserved_port()
        async with silent() as quiet, echoes("good") as (good,):
            spec = tcp_service(port, quiet, good)
            plane = embedded(tmp_path, spec)
            async with started(plane, spec):
                unanswered = await asyncio.open_connection("127.0.0.1", port)  # to `quiet`
                unanswered[1].write(b"slow query\n")
                answered = await asyncio.open_connection("127.0.0.1", port)  # to `good`
                answered[1].write(b"hi\n")
                assert (await answered[0].readline()).startswith(b"good ")
                cuts = [plane.drain("db", quiet, 0.2), plane.drain("db", good, 0.2)]
                results = await asyncio.gather(*cuts)
                assert [r.cancelled for r in results] == [1, 1]
                targets = (await plane.stats()).services["db"].pools["stable"].targets
                for _, writer in (unanswered, answered):
                    writer.close()
        # Cut by us before any answer: cancelled, no error; once answered: an answer.
        assert targets[quiet].failures["cancelled"] == 1, targets[quiet]
        assert targets[quiet].failures["reset"] == 0, targets[quiet]
        assert (targets[good].responses["2xx"], targets[good].failures["cancelled"]) == (1, 0)

    run(main())
