"""Health through real sockets (issue 2, point 4): active checks, passive
outlier ejection, the max-ejection guard, 503 with nothing healthy, slow start.

Every wait is a condition polled for a short while (the checker runs every
20 ms); assertions count requests, never time.
"""

from __future__ import annotations

from collections import Counter

from harness import (
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
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.target import Target
from zerodown.routing import (
    HealthSpec,
    PassiveHealthSpec,
    PoolSpec,
    RoutingTable,
    ServiceSpec,
    TargetSpec,
)

FAST_CHECKS = HealthSpec(path="/health", interval=0.02, timeout=0.2, rise=1, fall=1)


def target(server: ProxyServer, backend: Backend) -> Target:
    return server.services["web"].targets_by_address()[backend.address]


def traffic(backend: Backend) -> list[Request]:
    """What a backend got apart from health checks."""
    return [r for r in backend.requests if r.path != "/health"]


class Switchable:
    """A backend whose /health status and whose answer to everything else a test sets."""

    def __init__(self, name: str, health: int = 200, status: int = 200) -> None:
        self.health = health
        self.status = status
        self.backend = Backend(name=name, handler=self.handle)

    async def handle(self, req: Request) -> bytes:
        name = self.backend.name
        if req.path == "/health":
            return ok(b"health", status=self.health)
        return ok(name.encode(), status=self.status, headers={"X-Backend": name})


async def served_by(port: int, count: int) -> Counter[str]:
    """X-Backend of `count` sequential requests on one keep-alive connection."""
    names: Counter[str] = Counter()
    async with KeepAliveClient(port) as client:
        for _ in range(count):
            response = await client.request()
            assert response.status == 200, response
            names[response.header("x-backend") or "?"] += 1
    return names


# -- active checks --------------------------------------------------------------------


def test_active_check_takes_a_failing_backend_out_and_brings_it_back() -> None:
    async def main() -> None:
        a, b = Switchable("a"), Switchable("b")
        await a.backend.start()
        await b.backend.start()
        try:
            spec = service(a.backend.address, b.backend.address, health=FAST_CHECKS)
            async with proxy(spec) as server:
                port = port_of(server)
                await until(lambda: len(a.backend.requests) > 0, "first check of a")
                assert await served_by(port, 10) == {"a": 5, "b": 5}

                a.health = 500
                await until(lambda: target(server, a.backend).health.state == "down", "a down")
                before = len(traffic(a.backend))
                assert await served_by(port, 20) == {"b": 20}
                assert len(traffic(a.backend)) == before

                a.health = 200
                await until(lambda: target(server, a.backend).health.state == "up", "a back up")
                counts = await served_by(port, 20)
                assert counts["a"] >= 8, counts
                assert counts["b"] >= 8, counts
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())


def test_active_check_expect_status_decides_what_passes() -> None:
    async def main() -> None:
        a, b = Switchable("a", health=204), Switchable("b")
        await a.backend.start()
        await b.backend.start()
        try:
            checks = FAST_CHECKS.model_copy(update={"expect_status": (200,)})
            spec = service(a.backend.address, b.backend.address, health=checks)
            async with proxy(spec) as server:
                await until(lambda: target(server, a.backend).health.state == "down", "a down")
                assert await served_by(port_of(server), 10) == {"b": 10}
                assert target(server, b.backend).health.state == "up"
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())


# -- passive outlier detection ------------------------------------------------------------


def test_passive_ejects_a_backend_after_consecutive_5xx_and_it_gets_nothing_while_ejected() -> None:
    async def main() -> None:
        bad, good = Switchable("bad", status=500), Switchable("good")
        await bad.backend.start()
        await good.backend.start()
        try:
            passive = PassiveHealthSpec(
                consecutive_errors=3, base_ejection_time=0.5, max_ejection_percent=50
            )
            spec = service(bad.backend.address, good.backend.address, passive=passive)
            async with proxy(spec) as server:
                port = port_of(server)
                bad_target = target(server, bad.backend)
                # Round robin alternates: bad, good, bad, good, bad -> ejected on its 3rd 5xx.
                statuses = [(await request(port)).status for _ in range(6)]
                assert statuses == [500, 200] * 3
                assert bad_target.health.state == "ejected"
                ejected_until = bad_target.health.ejected_until

                names = await served_by(port, 20)
                # Still the same ejection (not a return and a second one): all 20 were sent
                # while it was out, and it got none of them.
                assert bad_target.health.state == "ejected"
                assert bad_target.health.ejected_until == ejected_until
                assert names == {"good": 20}
                assert len(bad.backend.requests) == 3

                # The ejection time passes: it returns and, healthy now, takes its share.
                await until(lambda: bad_target.health.state == "up", "bad back after ejection")
                bad.status = 200
                counts = await served_by(port, 10)
                assert counts["bad"] >= 4, counts
                stats = server.stats().services["web"].pools["stable"].targets
                assert stats[bad.backend.address].ejections == 1
                assert stats[good.backend.address].ejections == 0
        finally:
            await bad.backend.stop()
            await good.backend.stop()

    run(main())


def test_without_active_checks_an_ejected_target_returns_after_every_ejection() -> None:
    # Only the passing of time can bring it back; it must, each time, however
    # the event loop's timer rounds the ejection time.
    async def main() -> None:
        bad, good = Switchable("bad", status=500), Switchable("good")
        await bad.backend.start()
        await good.backend.start()
        try:
            passive = PassiveHealthSpec(
                consecutive_errors=1, base_ejection_time=0.03, max_ejection_time=0.03
            )
            spec = service(bad.backend.address, good.backend.address, passive=passive)
            async with proxy(spec) as server:
                port = port_of(server)
                bad_target = target(server, bad.backend)
                for cycle in range(1, 11):
                    while bad_target.health.state == "up":
                        await request(port)
                    assert bad_target.health.ejections == cycle
                    await until(lambda: bad_target.health.state == "up", f"return no. {cycle}")
        finally:
            await bad.backend.stop()
            await good.backend.stop()

    run(main())


def test_with_active_checks_an_ejected_target_returns_on_a_passing_check() -> None:
    async def main() -> None:
        # /health passes but real traffic fails: ejected by traffic, back by checks.
        bad, good = Switchable("bad", status=500), Switchable("good")
        await bad.backend.start()
        await good.backend.start()
        try:
            passive = PassiveHealthSpec(consecutive_errors=2, base_ejection_time=0.05)
            spec = service(
                bad.backend.address, good.backend.address, health=FAST_CHECKS, passive=passive
            )
            async with proxy(spec) as server:
                port = port_of(server)
                bad_target = target(server, bad.backend)
                assert [(await request(port)).status for _ in range(4)] == [500, 200] * 2
                assert bad_target.health.state == "ejected"
                bad.status = 200
                await until(lambda: bad_target.health.state == "up", "back by a passing check")
                assert await served_by(port, 10) == {"bad": 5, "good": 5}
        finally:
            await bad.backend.stop()
            await good.backend.stop()

    run(main())


def test_a_target_removed_from_the_table_is_no_longer_checked() -> None:
    async def main() -> None:
        a, b = Switchable("a"), Switchable("b")
        await a.backend.start()
        await b.backend.start()
        try:
            spec = service(a.backend.address, b.backend.address, health=FAST_CHECKS)
            async with proxy(spec) as server:
                await until(lambda: len(a.backend.requests) >= 2, "a checked")
                await server.apply(
                    RoutingTable(services=(service(b.backend.address, health=FAST_CHECKS),))
                )
                checks_of_a = len(a.backend.requests)
                checks_of_b = len(b.backend.requests)
                # Five more rounds of b's checks: a, gone, gets at most the one in flight.
                await until(lambda: len(b.backend.requests) >= checks_of_b + 5, "b checked")
                assert len(a.backend.requests) <= checks_of_a + 1
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())


def test_passive_counts_connect_errors_too() -> None:
    async def main() -> None:
        async with backends("live") as (live,), backends("dead") as (dead,):
            dead_address = dead.address
            await dead.stop()  # its port now refuses connections
            passive = PassiveHealthSpec(consecutive_errors=2, base_ejection_time=5.0)
            spec = service(dead_address, live.address, passive=passive, tries=1)
            async with proxy(spec) as server:
                port = port_of(server)
                statuses = [(await request(port)).status for _ in range(4)]
                assert statuses == [502, 200, 502, 200]
                dead_target = server.services["web"].targets_by_address()[dead_address]
                assert dead_target.health.state == "ejected"
                assert [(await request(port)).status for _ in range(10)] == [200] * 10

    run(main())


def test_max_ejection_percent_never_ejects_the_last_serving_target() -> None:
    async def main() -> None:
        a, b = Switchable("a", status=500), Switchable("b", status=500)
        await a.backend.start()
        await b.backend.start()
        try:
            passive = PassiveHealthSpec(
                consecutive_errors=3, base_ejection_time=5.0, max_ejection_percent=50
            )
            spec = service(a.backend.address, b.backend.address, passive=passive)
            async with proxy(spec) as server:
                port = port_of(server)
                statuses = [(await request(port)).status for _ in range(30)]
                # Every request reached a backend (a 5xx is an answer, not retried):
                # one target was ejected, the other kept serving however bad it is.
                assert statuses == [500] * 30
                states = sorted(target(server, x.backend).health.state for x in (a, b))
                assert states == ["ejected", "up"]
                assert len(a.backend.requests) + len(b.backend.requests) == 30
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())


def test_a_single_target_pool_is_never_ejected() -> None:
    async def main() -> None:
        only = Switchable("only", status=500)
        await only.backend.start()
        try:
            passive = PassiveHealthSpec(consecutive_errors=1, max_ejection_percent=100)
            async with proxy(service(only.backend.address, passive=passive)) as server:
                port = port_of(server)
                assert [(await request(port)).status for _ in range(10)] == [500] * 10
                assert target(server, only.backend).health.state == "up"
                assert len(only.backend.requests) == 10
        finally:
            await only.backend.stop()

    run(main())


# -- nothing ready: 503 at once, saying why; nothing healthy: panic -------------------------


def test_all_targets_down_in_the_table_answers_503_without_touching_them() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            pool = PoolSpec(
                targets=(
                    TargetSpec(address=a.address, state="down"),
                    TargetSpec(address=b.address, state="down"),
                )
            )
            spec = ServiceSpec(name="web", stable=pool, health=None)
            async with proxy(spec) as server:
                responses = [await request(port_of(server)) for _ in range(5)]
        assert [r.status for r in responses] == [503] * 5
        assert all(r.header("x-request-id") for r in responses)
        assert {r.body for r in responses} == {
            b"503 Service Unavailable: no healthy target for web (all 2 targets down)\n"
        }
        assert {r.header("x-zerodown-error") for r in responses} == {"no_healthy_target"}
        assert (a.requests, b.requests) == ([], [])

    run(main())


def test_a_service_with_no_targets_at_all_answers_503() -> None:
    async def main() -> None:
        async with proxy(ServiceSpec(name="web", health=None)) as server:
            responses = [await request(port_of(server)) for _ in range(3)]
            assert [r.status for r in responses] == [503] * 3
            assert responses[0].body == (
                b"503 Service Unavailable: no healthy target for web (it has no targets)\n"
            )
            assert server.stats().rejected == {"503": 3}

    run(main())


def test_all_targets_failing_active_checks_still_serve_in_panic_until_one_passes() -> None:
    # Health that leaves nothing is more likely wrong than every app dead
    # (Envoy's panic threshold): the ready targets serve, and it shows in stats.
    async def main() -> None:
        a, b = Switchable("a", health=500), Switchable("b", health=500)
        await a.backend.start()
        await b.backend.start()
        try:
            spec = service(a.backend.address, b.backend.address, health=FAST_CHECKS)
            async with proxy(spec) as server:
                await until(
                    lambda: all(t.health.state == "down" for t in server.services["web"].targets()),
                    "both down",
                )
                responses = [await request(port_of(server)) for _ in range(6)]
                assert [r.status for r in responses] == [200] * 6
                assert len(traffic(a.backend)) == len(traffic(b.backend)) == 3
                assert server.stats().services["web"].panic == 6

                b.health = 200
                await until(lambda: target(server, b.backend).health.state == "up", "b up")
                responses = [await request(port_of(server)) for _ in range(4)]
                assert [(r.status, r.body) for r in responses] == [(200, b"b")] * 4
                assert server.stats().services["web"].panic == 6  # no panic: b is up
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())


def test_the_last_serving_target_is_not_ejected_while_the_other_is_down() -> None:
    # Down by active checks plus a passive limit: the remaining target is the last
    # serving one, so it cannot be ejected and every request still gets an answer.
    async def main() -> None:
        a, b = Switchable("a", health=500), Switchable("b", status=500)
        await a.backend.start()
        await b.backend.start()
        try:
            passive = PassiveHealthSpec(consecutive_errors=1, max_ejection_percent=100)
            spec = service(
                a.backend.address, b.backend.address, health=FAST_CHECKS, passive=passive
            )
            async with proxy(spec) as server:
                await until(lambda: target(server, a.backend).health.state == "down", "a down")
                statuses = [(await request(port_of(server))).status for _ in range(5)]
                assert statuses == [500] * 5
                assert target(server, b.backend).health.state == "up"
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())


# -- slow start -----------------------------------------------------------------------------


def test_slow_start_gives_a_returning_target_a_reduced_share_first() -> None:
    async def main() -> None:
        a, b = Switchable("a"), Switchable("b")
        await a.backend.start()
        await b.backend.start()
        try:
            # The ramp is long next to the ~100 requests below, so a's weight
            # factor stays near its floor (0.1) while we count.
            spec = service(
                a.backend.address, b.backend.address, health=FAST_CHECKS, slow_start=30.0
            )
            async with proxy(spec) as server:
                port = port_of(server)
                # New to the table: no ramp (the orchestrator gated it already).
                assert await served_by(port, 10) == {"a": 5, "b": 5}

                a.health = 500
                await until(lambda: target(server, a.backend).health.state == "down", "a down")
                a.health = 200
                await until(lambda: target(server, a.backend).health.state == "up", "a back up")
                counts = await served_by(port, 110)
                # Full weight would give 55/55; at the floor a gets ~1 in 11.
                assert 1 <= counts["a"] <= 25, counts
                assert counts["b"] >= 3 * counts["a"], counts
        finally:
            await a.backend.stop()
            await b.backend.stop()

    run(main())
