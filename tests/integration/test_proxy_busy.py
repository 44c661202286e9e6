"""A busy app is not a dead app (issue 9), through real sockets.

A backend whose /health hangs (as a one-worker synchronous app's does while
requests queue ahead of the check) but which answers every real request stays
in: its timed-out checks are excused while its answers arrive. When health
leaves a service nothing anyway, the proxy routes to its ready targets
(panic) instead of answering 503: a live app serves, a dead one gives 502.

Every wait is a condition polled for a short while; assertions count
requests and read states, never time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from harness import (
    Action,
    Backend,
    KeepAliveClient,
    Request,
    backends,
    ok,
    port_of,
    proxy,
    request,
    run,
    service,
    until,
)
from zerodown.dataplane.supervisor import MultiWorkerDataPlane
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.target import Target
from zerodown.routing import HealthSpec, RoutingTable

# Checks that hang time out after 100 ms; two in a row would take a target down.
HANGING_CHECKS = HealthSpec(path="/health", interval=0.05, timeout=0.1, rise=1, fall=2)
ROUNDS = 8  # check rounds watched: four times what `fall` needs to take a target down


class Busy:
    """A backend that answers real requests at once and hangs its /health while `busy`."""

    def __init__(self, name: str, busy: bool) -> None:
        self.busy = busy
        self.backend = Backend(name=name, handler=self.handle)

    async def handle(self, req: Request) -> bytes | Action:
        if req.path == "/health":
            return Action(hang=True) if self.busy else ok(b"health")
        return ok(self.backend.name.encode(), headers={"X-Backend": self.backend.name})

    @property
    def address(self) -> str:
        return self.backend.address

    def checks(self) -> int:
        return sum(1 for r in self.backend.requests if r.path == "/health")


@contextlib.asynccontextmanager
async def busy_backend(name: str = "busy", busy: bool = True) -> AsyncIterator[Busy]:
    app = Busy(name, busy)
    await app.backend.start()
    try:
        yield app
    finally:
        await app.backend.stop()


def only_target(server: ProxyServer) -> Target:
    (target,) = server.services["web"].targets()
    return target


async def serve_through_check_rounds(port: int, busy: Busy, target: Target) -> list[str]:
    """Requests back to back until ROUNDS more checks went out; the health seen after each."""
    seen: list[str] = []
    last = busy.checks() + ROUNDS
    async with KeepAliveClient(port) as client:
        while busy.checks() < last:
            response = await client.request()
            assert response.status == 200, response
            seen.append(target.health.state)
            await asyncio.sleep(0.005)
    return seen


def test_a_target_whose_checks_hang_while_it_answers_stays_in() -> None:
    async def main() -> None:
        async with busy_backend() as busy:
            spec = service(busy.address, health=HANGING_CHECKS)
            async with proxy(spec) as server:
                target = only_target(server)
                seen = await serve_through_check_rounds(port_of(server), busy, target)
                assert set(seen) == {"up"}, seen
                assert target.health.excused >= ROUNDS - 2, target.health
                assert server.stats().services["web"].panic == 0

                # Its answers stop: the same hanging checks now take it down.
                await until(lambda: target.health.state == "down", "down without traffic")

    run(main())


def test_a_target_that_answers_nothing_is_taken_down_by_hanging_checks() -> None:
    async def main() -> None:
        async with (
            busy_backend() as busy,
            proxy(service(busy.address, health=HANGING_CHECKS)) as server,
        ):
            target = only_target(server)
            await until(lambda: target.health.state == "down", "down")
            assert target.health.excused == 0

    run(main())


def test_with_workers_the_supervisor_excuses_a_target_its_workers_hear_from() -> None:
    # The checks run in the supervisor, which serves nothing: it learns that the
    # target answers from the workers' counters growing between two reads.
    async def main() -> None:
        async with busy_backend(busy=False) as busy:
            table = RoutingTable(services=(service(busy.address, health=HANGING_CHECKS),))
            data_plane = MultiWorkerDataPlane(ProxySettings(), table, 2)
            data_plane.stats_poll = 0.05  # read the workers' counters every check round
            await data_plane.start(["127.0.0.1:0"])
            try:
                port = data_plane.addresses[0][1]
                target = only_target(data_plane.server)
                # Busy only once the supervisor has heard of answers: while the
                # workers start, hanging checks with no traffic would (rightly)
                # take the target down, and then only passing checks bring it up.
                assert (await request(port)).status == 200
                await until(lambda: target.health.answered_at is not None, "an answer heard")
                busy.busy = True
                # New connections (either worker may take each), until ROUNDS checks.
                last = busy.checks() + ROUNDS
                states = []
                while busy.checks() < last:
                    response = await request(port)
                    assert response.status == 200, response
                    states.append(target.health.state)
                    await asyncio.sleep(0.005)
                assert set(states) == {"up"}, states
                assert target.health.excused >= ROUNDS - 2, target.health
                await until(lambda: target.health.state == "down", "down without traffic")
            finally:
                await data_plane.stop(1.0)

    run(main())


# -- panic: every target out by health --------------------------------------------------


def test_every_target_down_by_health_still_serves_and_counts_panic() -> None:
    async def main() -> None:
        async with busy_backend("a") as a, busy_backend("b") as b:
            spec = service(a.address, b.address, health=HANGING_CHECKS)
            async with proxy(spec) as server:
                targets = list(server.services["web"].targets())
                await until(lambda: all(t.health.state == "down" for t in targets), "both down")
                # No traffic reached them before: the hanging checks took both down.
                port = port_of(server)
                responses = [await request(port) for _ in range(10)]
                assert [r.status for r in responses] == [200] * 10
                assert sorted(r.body.decode() for r in responses) == ["a"] * 5 + ["b"] * 5
                stats = server.stats().services["web"]
                assert stats.panic == 10
                by_address = stats.pools["stable"].targets
                assert [by_address[x.address].panic for x in (a, b)] == [5, 5]
                assert 'zerodown_panic_total{service="web"} 10.0\n' in server.prometheus()

    run(main())


def test_a_dead_service_in_panic_answers_502_from_the_connect_errors() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            addresses = (a.address, b.address)
            await a.stop()
            await b.stop()  # both ports now refuse connections
            async with proxy(service(*addresses, health=HANGING_CHECKS)) as server:
                targets = list(server.services["web"].targets())
                await until(lambda: all(t.health.state == "down" for t in targets), "both down")
                response = await request(port_of(server))
                assert response.status == 502
                assert response.header("x-zerodown-error") == "upstream_connect"
                # Tried both (a retry to the other target), then gave up.
                assert server.stats().services["web"].panic == 2

    run(main())
