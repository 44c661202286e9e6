"""Routing and live changes through real sockets (issue 2, points 8 and 9).

Services by host (exact, `*.example.com`, catch-all) and longest path
prefix, with an optional prefix strip; routing tables swapped while traffic
flows (no request fails, in-flight requests keep their target); the canary
split by weight, by header/cookie cohort and with a sticky cookie; and the
EmbeddedDataPlane's apply/routing round trip.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from harness import (
    Backend,
    KeepAliveClient,
    Request,
    Response,
    backends,
    ok,
    port_of,
    proxy,
    read_response,
    request,
    run,
    service,
    until,
)
from zerodown.control.admin import create_admin_app
from zerodown.control.server import AdminServer
from zerodown.dataplane.embedded import EmbeddedDataPlane
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import CohortRule, PoolSpec, RoutingTable, ServiceSpec, Split, TargetSpec


def table(*services: ServiceSpec) -> RoutingTable:
    return RoutingTable(services=services)


def pool(*targets: tuple[str, int]) -> PoolSpec:
    return PoolSpec(targets=tuple(TargetSpec(address=a, weight=w) for a, w in targets))


async def get(port: int, host: str = "example.test", path: str = "/", **kw: object) -> Response:
    return await request(port, path=path, host=host, **kw)  # type: ignore[arg-type]


# -- host and path -----------------------------------------------------------------------


def test_host_exact_beats_wildcard_beats_catch_all() -> None:
    async def main() -> None:
        async with backends("exact", "wild", "any", "api") as (exact, wild, any_, api):
            routes = table(
                service(exact.address, name="exact", host="api.example.com"),
                service(api.address, name="api", host="api.example.com", path="/api"),
                service(wild.address, name="wild", host="*.example.com"),
                service(any_.address, name="any", host="*"),
            )
            async with proxy(*routes.services) as server:
                port = port_of(server)
                cases = {
                    ("api.example.com", "/"): b"exact",
                    ("API.Example.COM:8080", "/x"): b"exact",
                    ("api.example.com", "/api/v1"): b"api",
                    ("www.example.com", "/"): b"wild",
                    ("deep.www.example.com", "/api"): b"wild",
                    ("example.com", "/"): b"any",
                    ("other.test", "/"): b"any",
                    ("example.com.evil.test", "/"): b"any",
                }
                for (host, path), expected in cases.items():
                    response = await get(port, host, path)
                    assert (response.status, response.body) == (200, expected), (host, path)

    run(main())


def test_no_matching_service_is_404_and_reaches_no_backend() -> None:
    async def main() -> None:
        async with (
            backends("a") as (a,),
            proxy(service(a.address, host="*.example.com", path="/app")) as server,
        ):
            port = port_of(server)
            assert (await get(port, "www.example.com", "/app/x")).status == 200
            for host, path in (("other.test", "/app"), ("www.example.com", "/apps")):
                assert (await get(port, host, path)).status == 404
        assert len(a.requests) == 1

    run(main())


def test_longest_path_prefix_wins_on_segment_boundaries() -> None:
    async def main() -> None:
        async with (
            backends("root", "api", "v2") as (root, api, v2),
            proxy(
                service(root.address, name="root"),
                service(api.address, name="api", path="/api"),
                service(v2.address, name="v2", path="/api/v2/"),
            ) as server,
        ):
            port = port_of(server)
            cases = {
                "/": b"root",
                "/apix": b"root",
                "/api": b"api",
                "/api?x=1": b"api",
                "/api/x": b"api",
                "/api/v20": b"api",
                "/api/v2": b"v2",
                "/api/v2/users?id=7": b"v2",
            }
            for path, expected in cases.items():
                assert (await get(port, path=path)).body == expected, path

    run(main())


def test_strip_prefix_sends_the_backend_the_rest_of_the_path() -> None:
    async def main() -> None:
        async with (
            backends("strip", "keep") as (strip, keep),
            proxy(
                service(strip.address, name="strip", path="/api", strip_prefix=True),
                service(keep.address, name="keep", path="/keep"),
            ) as server,
        ):
            port = port_of(server)
            for path in ("/api/users?id=1", "/api", "/api?q=1", "/api/", "/keep/x?y"):
                assert (await get(port, path=path)).status == 200
        assert [r.path for r in strip.requests] == ["/users?id=1", "/", "/?q=1", "/"]
        assert [r.path for r in keep.requests] == ["/keep/x?y"]

    run(main())


# -- live table changes ---------------------------------------------------------------------


def test_tables_swapped_under_load_fail_no_request() -> None:
    async def main() -> None:
        clients, per_client = 20, 50
        total = clients * per_client
        async with backends("a", "b", "c") as (a, b, c):
            tables = [
                table(ServiceSpec(name="web", health=None, stable=pool(*targets)))
                for targets in (
                    ((a.address, 1), (b.address, 1)),
                    ((b.address, 3), (c.address, 1)),
                    ((c.address, 1),),
                    ((a.address, 5), (c.address, 1)),
                    ((a.address, 1), (b.address, 1), (c.address, 1)),
                )
                * 2
            ]
            async with proxy(*tables[-1].services) as server:
                port = port_of(server)
                statuses: list[int] = []
                done_at_swap: list[int] = []

                async def client() -> None:
                    async with KeepAliveClient(port) as conn:
                        for _ in range(per_client):
                            statuses.append((await conn.request()).status)

                async def swapper() -> None:
                    def reached_next_mark() -> bool:
                        return len(statuses) >= (len(done_at_swap) + 1) * total // 12

                    for new in tables:
                        # Swap at fixed points of the load, not at fixed times.
                        await until(reached_next_mark, "load")
                        await server.apply(new)
                        done_at_swap.append(len(statuses))

                await asyncio.gather(swapper(), *(client() for _ in range(clients)))
                assert server.routing() == tables[-1]
        assert len(done_at_swap) == 10
        assert all(0 < n < total for n in done_at_swap)
        assert Counter(statuses) == {200: total}
        assert len(a.requests) + len(b.requests) + len(c.requests) == total

    run(main())


def test_a_request_in_flight_keeps_its_target_when_a_swap_removes_it() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def hold(req: Request) -> bytes:
            await gate.wait()
            return ok(b"old")

        old = await Backend(name="old", handler=hold).start()
        try:
            async with backends("new") as (new,), proxy(service(old.address)) as server:
                port = port_of(server)
                slow = asyncio.create_task(get(port, path="/slow"))
                await until(lambda: len(old.requests) == 1, "request at old")

                await server.apply(table(service(new.address)))
                assert [(await get(port)).body for _ in range(5)] == [b"new"] * 5
                gate.set()
                response = await slow
                assert (response.status, response.body) == (200, b"old")
                assert len(old.requests) == 1
                # The removed target's connection is closed once its request is done.
                await until(lambda: not old._writers, "old's connection closed")
        finally:
            await old.stop()

    run(main())


def test_removing_a_whole_service_lets_its_request_in_flight_finish() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def hold(req: Request) -> bytes:
            await gate.wait()
            return ok(b"api")

        api = await Backend(name="api", handler=hold).start()
        try:
            async with (
                backends("root") as (root,),
                proxy(
                    service(root.address), service(api.address, name="api", path="/api")
                ) as server,
            ):
                port = port_of(server)
                slow = asyncio.create_task(get(port, path="/api/slow"))
                await until(lambda: len(api.requests) == 1, "request at api")
                await server.apply(table(service(root.address)))
                # New requests for /api now fall to the catch-all service.
                assert (await get(port, path="/api/x")).body == b"root"
                gate.set()
                response = await slow
                assert (response.status, response.body) == (200, b"api")
        finally:
            await api.stop()

    run(main())


# -- canary split ---------------------------------------------------------------------------


def canary_service(stable: str, canary: str, split: Split) -> ServiceSpec:
    return service(stable, canary=(canary,), split=split)


async def pools_served(port: int, count: int, clients: int = 10) -> Counter[str]:
    names: Counter[str] = Counter()

    async def client(n: int) -> None:
        async with KeepAliveClient(port) as conn:
            for _ in range(n):
                response = await conn.request()
                assert response.status == 200
                names[response.header("x-backend") or "?"] += 1

    await asyncio.gather(*(client(count // clients) for _ in range(clients)))
    return names


def test_canary_weight_20_sends_a_fifth_of_the_traffic_to_canary() -> None:
    async def main() -> None:
        async with backends("stable", "canary") as (stable, canary):
            spec = canary_service(stable.address, canary.address, Split(canary_weight=20))
            async with proxy(spec) as server:
                counts = await pools_served(port_of(server), 1000)
        assert sum(counts.values()) == 1000
        # Binomial(1000, 0.2): mean 200, sd 12.6; the band is over 4.5 sd wide each way.
        assert 143 <= counts["canary"] <= 257, counts

    run(main())


def test_canary_weights_0_and_100_are_exact() -> None:
    async def main() -> None:
        async with backends("stable", "canary") as (stable, canary):
            spec = canary_service(stable.address, canary.address, Split(canary_weight=0))
            async with proxy(spec) as server:
                port = port_of(server)
                assert await pools_served(port, 100) == {"stable": 100}
                full = canary_service(stable.address, canary.address, Split(canary_weight=100))
                await server.apply(table(full))
                assert await pools_served(port, 100) == {"canary": 100}

    run(main())


def test_cohort_rules_pin_a_header_or_cookie_to_a_pool_whatever_the_weight() -> None:
    async def main() -> None:
        split = Split(
            canary_weight=50,
            cohorts=(
                CohortRule(header="X-Canary", values=("1", "always"), pool="canary"),
                CohortRule(header="X-Canary", values=("0", "never"), pool="stable"),
                CohortRule(cookie="beta", values=("yes",), pool="canary"),
            ),
        )
        async with (
            backends("stable", "canary") as (stable, canary),
            proxy(canary_service(stable.address, canary.address, split)) as server,
        ):
            port = port_of(server)

            async def served(headers: dict[str, str], n: int = 40) -> Counter[str]:
                names: Counter[str] = Counter()
                async with KeepAliveClient(port) as conn:
                    for _ in range(n):
                        response = await conn.request(headers=headers)
                        names[response.header("x-backend") or "?"] += 1
                return names

            assert await served({"X-Canary": "1"}) == {"canary": 40}
            assert await served({"X-Canary": "always"}) == {"canary": 40}
            assert await served({"X-Canary": "never"}) == {"stable": 40}
            assert await served({"X-Canary": "0"}) == {"stable": 40}
            assert await served({"Cookie": "a=b; beta=yes"}) == {"canary": 40}
            # Anyone else is split by weight: both pools see some of 200.
            others = await served({"X-Canary": "maybe"}, n=200)
            assert others["stable"] >= 60, others
            assert others["canary"] >= 60, others

    run(main())


def test_a_sticky_cookie_keeps_each_client_on_its_pool_while_the_weight_moves() -> None:
    async def main() -> None:
        async with backends("stable", "canary") as (stable, canary):

            def spec(weight: float) -> ServiceSpec:
                split = Split(canary_weight=weight, sticky_cookie="zd_pool")
                return canary_service(stable.address, canary.address, split)

            async with proxy(spec(50)) as server:
                port = port_of(server)
                assigned: dict[int, str] = {}
                for client in range(30):
                    response = await get(port)
                    cookie = response.header("set-cookie") or ""
                    assert cookie.startswith("zd_pool="), response.headers
                    pool_name = cookie.split(";")[0].split("=")[1]
                    assert response.body == pool_name.encode()
                    assigned[client] = pool_name
                assert set(assigned.values()) == {"stable", "canary"}

                for weight in (10, 90, 0.5, 99.5, 50):
                    await server.apply(table(spec(weight)))
                    for client, pool_name in assigned.items():
                        response = await get(port, headers={"Cookie": f"zd_pool={pool_name}"})
                        assert response.body == pool_name.encode(), (client, weight)
                        assert response.header("set-cookie") is None

    run(main())


def test_with_no_available_canary_target_everyone_is_served_by_stable() -> None:
    async def main() -> None:
        async with backends("stable", "canary") as (stable, canary):
            split = Split(
                canary_weight=100,
                sticky_cookie="zd_pool",
                cohorts=(CohortRule(header="X-Canary", values=("1",), pool="canary"),),
            )
            spec = ServiceSpec(
                name="web",
                health=None,
                stable=pool((stable.address, 1)),
                canary=PoolSpec(targets=(TargetSpec(address=canary.address, state="down"),)),
                split=split,
            )
            async with proxy(spec) as server:
                port = port_of(server)
                for headers in ({}, {"X-Canary": "1"}, {"Cookie": "zd_pool=canary"}):
                    response = await get(port, headers=headers)
                    assert (response.status, response.body) == (200, b"stable"), headers
                # A sticky client whose pool went away is re-assigned, and told so.
                response = await get(port, headers={"Cookie": "zd_pool=canary"})
                assert (response.header("set-cookie") or "").startswith("zd_pool=stable")
        assert canary.requests == []

    run(main())


# -- the data plane seam ----------------------------------------------------------------------


def test_embedded_data_plane_apply_and_routing_round_trip() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            first = table(service(a.address))
            plane = EmbeddedDataPlane(ProxySettings(), first)
            await plane.start(["127.0.0.1:0"])
            try:
                port = plane.addresses[0][1]
                assert plane.routing() == first
                assert (await get(port)).body == b"a"

                second = table(service(a.address, b.address, balance="least_conn"))
                await plane.apply(second)
                assert plane.routing() == second
                assert {(await get(port)).body for _ in range(6)} == {b"a", b"b"}

                result = await plane.drain("web", a.address, timeout=1.0)
                assert result.completed
                drained = plane.routing().service("web")
                assert drained is not None
                states = {t.address: t.state for t in drained.stable.targets}
                assert states == {a.address: "draining", b.address: "ready"}
                assert {(await get(port)).body for _ in range(4)} == {b"b"}

                stats = (await plane.stats()).services["web"].pools["stable"]
                assert stats.targets[a.address].state == "draining"
                assert stats.totals.requests == 11
                assert f'target="{b.address}"' in await plane.prometheus()
            finally:
                await plane.stop(1.0)

    run(main())


def test_put_routing_on_the_admin_api_changes_where_real_traffic_goes() -> None:
    async def main() -> None:
        token = "s3cret"
        async with backends("a", "b") as (a, b):
            plane = EmbeddedDataPlane(ProxySettings(), table(service(a.address)))
            await plane.start(["127.0.0.1:0"])
            admin = AdminServer(create_admin_app(plane, token), "127.0.0.1", 0)
            await admin.start()
            try:
                port, host = plane.addresses[0][1], f"127.0.0.1:{admin.port}"
                auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                assert (await get(port)).body == b"a"

                new = table(service(b.address, balance="least_conn"))
                body = new.model_dump_json().encode()
                put = await request(
                    admin.port, "PUT", "/v1/routing", headers=auth, body=body, host=host
                )
                assert put.status == 200, put.body
                assert plane.routing() == new
                assert [(await get(port)).body for _ in range(5)] == [b"b"] * 5

                got = await request(admin.port, "GET", "/v1/routing", headers=auth, host=host)
                assert RoutingTable.model_validate_json(got.body) == new
                refused = await request(admin.port, "PUT", "/v1/routing", body=body, host=host)
                assert refused.status == 401
            finally:
                await admin.stop()
                await plane.stop(1.0)

    run(main())


def test_a_request_parsed_before_a_swap_is_routed_by_the_table_in_force_when_it_runs() -> None:
    """A pipelined request waits behind a slow one; the table changes under it.

    It must be served by the new table's targets, not fail against the pools
    of the table that was in force when its head was read.
    """
    pipelined = b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"

    async def main() -> None:
        release = asyncio.Event()

        async def slow(req: Request) -> bytes:
            if req.path == "/slow":
                await release.wait()
            return ok(b"old")

        async with (
            backends("old", handler=slow) as (old,),
            backends("new") as (new,),
            proxy(service(old.address)) as server,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(pipelined)
            await until(lambda: len(old.requests) == 1, "the slow request reached old")
            await server.apply(RoutingTable(services=(service(new.address),)))
            release.set()
            first = await read_response(reader)
            second = await read_response(reader)
            writer.close()
        assert (first.status, first.body) == (200, b"old")
        assert (second.status, second.body) == (200, b"new")
        assert [r.path for r in new.requests] == ["/next"]

    run(main())
