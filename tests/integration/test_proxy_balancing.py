"""Balancing through real sockets (issue 2, point 3).

Ports the ideas of nginx-tests upstream.t (weights, least_conn),
upstream_hash.t (consistent hash, removing a server moves only its keys) and
HAProxy's balance-rr.vtc (the exact round-robin order). Backends answer with
their name, so every count is exact; random algorithms are judged with
tolerance bands, never with time.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from harness import (
    Backend,
    KeepAliveClient,
    Request,
    backends,
    ok,
    parse_responses,
    port_of,
    proxy,
    request,
    run,
    service,
    until,
)
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec


def weighted(*targets: tuple[str, int], **spec: object) -> ServiceSpec:
    """A service whose stable pool has these (address, weight) targets; health checks off."""
    spec.setdefault("health", None)
    pool = PoolSpec(targets=tuple(TargetSpec(address=a, weight=w) for a, w in targets))
    return ServiceSpec(name="web", stable=pool, **spec)  # type: ignore[arg-type]


async def served_by(port: int, count: int, clients: int = 4, **kwargs: object) -> list[str]:
    """Send `count` requests over `clients` keep-alive connections; the X-Backend of each."""
    names: list[str] = []

    async def one_client(n: int) -> None:
        async with KeepAliveClient(port) as client:
            for _ in range(n):
                response = await client.request(**kwargs)  # type: ignore[arg-type]
                assert response.status == 200, response
                names.append(response.header("x-backend") or "?")

    share, extra = divmod(count, clients)
    await asyncio.gather(*(one_client(share + (i < extra)) for i in range(clients)))
    return names


# -- round robin -------------------------------------------------------------------


def test_round_robin_weights_3_to_1_give_exactly_300_and_100_of_400() -> None:
    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            proxy(weighted((a.address, 3), (b.address, 1))) as server,
        ):
            names = await served_by(port_of(server), 400)
        assert Counter(names) == {"a": 300, "b": 100}
        assert (len(a.requests), len(b.requests)) == (300, 100)

    run(main())


def test_round_robin_order_is_smooth_and_exact() -> None:
    # balance-rr.vtc: with equal weights the servers answer in turn; nginx's
    # smooth WRR interleaves a 3:1 pair as a a b a, never a a a b.
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            async with proxy(service(a.address, b.address, c.address)) as server:
                equal = await served_by(port_of(server), 9, clients=1)
            async with proxy(weighted((a.address, 3), (b.address, 1))) as server:
                smooth = await served_by(port_of(server), 8, clients=1)
        assert equal == ["a", "b", "c"] * 3
        assert smooth == ["a", "a", "b", "a"] * 2

    run(main())


def test_round_robin_weight_zero_target_gets_nothing() -> None:
    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            proxy(weighted((a.address, 1), (b.address, 0))) as server,
        ):
            names = await served_by(port_of(server), 20)
        assert Counter(names) == {"a": 20}
        assert b.requests == []

    run(main())


def test_a_weight_change_by_table_swap_applies_to_the_next_requests_exactly() -> None:
    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            proxy(weighted((a.address, 1), (b.address, 1))) as server,
        ):
            port = port_of(server)
            assert Counter(await served_by(port, 100)) == {"a": 50, "b": 50}
            await server.apply(RoutingTable(services=(weighted((a.address, 1), (b.address, 4)),)))
            assert Counter(await served_by(port, 100)) == {"a": 20, "b": 80}

    run(main())


# -- least_conn ----------------------------------------------------------------------


def holding_backend(name: str, gate: asyncio.Event) -> Backend:
    """A backend that holds /slow requests until `gate` is set and answers others at once."""

    async def handle(req: Request) -> bytes:
        if req.path.startswith("/slow"):
            await gate.wait()
        return ok(name.encode(), headers={"X-Backend": name})

    return Backend(name=name, handler=handle)


def test_least_conn_sends_new_requests_away_from_the_busy_backend() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        a, b = holding_backend("a", gate), holding_backend("b", gate)
        await a.start()
        await b.start()
        try:
            async with proxy(service(a.address, b.address, balance="least_conn")) as server:
                port = port_of(server)
                slow = asyncio.create_task(request(port, path="/slow"))
                await until(lambda: len(a.requests) + len(b.requests) == 1, "slow request held")
                busy, idle = (a, b) if a.requests else (b, a)
                names = await served_by(port, 20, clients=1)
                assert Counter(names) == {idle.name: 20}
                assert len(busy.requests) == 1
                gate.set()
                response = await slow
                assert (response.status, response.body) == (200, busy.name.encode())
                # Once both are idle again, ties are shared round-robin, not all to one.
                names = await served_by(port, 20, clients=1)
                assert Counter(names) == {"a": 10, "b": 10}
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_least_conn_spreads_held_requests_one_per_backend() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        held = [holding_backend(n, gate) for n in ("a", "b", "c")]
        for b in held:
            await b.start()
        try:
            spec = service(*(b.address for b in held), balance="least_conn")
            async with proxy(spec) as server:
                port = port_of(server)
                tasks = []
                for _ in range(3):
                    tasks.append(asyncio.create_task(request(port, path="/slow")))
                    await until(lambda: sum(len(b.requests) for b in held) == len(tasks), "held")
                assert [len(b.requests) for b in held] == [1, 1, 1]
                gate.set()
                assert [r.status for r in await asyncio.gather(*tasks)] == [200, 200, 200]
        finally:
            for b in held:
                await b.stop()

    run(main())


# -- consistent hash ---------------------------------------------------------------------


async def users_to_backends(port: int, users: list[str], repeat: int = 3) -> dict[str, str]:
    """Each user's backend; asserts every one of a user's requests reached the same one."""
    seen: dict[str, str] = {}
    async with KeepAliveClient(port) as client:
        for _ in range(repeat):
            for user in users:
                response = await client.request(headers={"X-User": user})
                assert response.status == 200
                name = response.header("x-backend") or "?"
                assert seen.setdefault(user, name) == name, f"{user} moved without a table change"
    return seen


def test_hash_on_header_keeps_each_user_on_one_backend() -> None:
    async def main() -> None:
        users = [f"user-{i}" for i in range(120)]
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(
                a.address, b.address, c.address, balance="hash", hash_key="header:X-User"
            )
            async with proxy(spec) as server:
                placement = await users_to_backends(port_of(server), users)
        # 160 ring points per target: each of 3 gets roughly a third of 120 users.
        shares = Counter(placement.values())
        assert set(shares) == {"a", "b", "c"}
        assert all(15 <= n <= 70 for n in shares.values()), shares

    run(main())


def test_hash_removing_a_backend_moves_only_its_users_and_adding_it_back_restores_them() -> None:
    async def main() -> None:
        users = [f"user-{i}" for i in range(120)]
        async with backends("a", "b", "c") as (a, b, c):
            full = service(
                a.address, b.address, c.address, balance="hash", hash_key="header:X-User"
            )
            async with proxy(full) as server:
                port = port_of(server)
                before = await users_to_backends(port, users)
                without_c = service(a.address, b.address, balance="hash", hash_key="header:X-User")
                await server.apply(RoutingTable(services=(without_c,)))
                after = await users_to_backends(port, users)
                await server.apply(RoutingTable(services=(full,)))
                restored = await users_to_backends(port, users)
        moved = {u for u in users if before[u] != after[u]}
        assert moved == {u for u in users if before[u] == "c"}
        assert moved, "c had no users to move"
        assert all(after[u] in ("a", "b") for u in moved)
        assert restored == before

    run(main())


def test_hash_on_path_by_default_sends_one_path_to_one_backend() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="hash")
            async with proxy(spec) as server:
                port = port_of(server)
                for path in ("/x", "/y/z", "/users/42"):
                    names = {(await request(port, path=f"{path}?n={i}")).body for i in range(6)}
                    assert len(names) == 1, (path, names)

    run(main())


def test_hash_on_a_cookie_keeps_a_session_on_one_backend() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="hash", hash_key="cookie:sid")
            async with proxy(spec) as server:
                port = port_of(server)
                placement: dict[str, set[str]] = {}
                for i in range(30):
                    for sid in ("s1", "s2", "s3", "s4", "s5", "s6"):
                        headers = {"Cookie": f"theme=dark{i}; sid={sid}"}
                        response = await request(port, headers=headers)
                        placement.setdefault(sid, set()).add(response.header("x-backend") or "?")
        assert all(len(names) == 1 for names in placement.values()), placement

    run(main())


# -- ip_hash -------------------------------------------------------------------------------


def test_ip_hash_sends_every_request_from_one_client_to_one_backend() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="ip_hash")
            async with proxy(spec) as server:
                port = port_of(server)
                fresh = [await request(port) for _ in range(15)]
                kept = await served_by(port, 45, clients=3)
        names = {r.header("x-backend") for r in fresh} | set(kept)
        assert len(names) == 1, names
        counts = sorted(len(b.requests) for b in (a, b, c))
        assert counts == [0, 0, 60]

    run(main())


async def backend_for_source(port: int, source_ip: str) -> str:
    """One request from `source_ip` (any 127.x.y.z is loopback on Linux); its X-Backend."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
        (response,) = parse_responses(await reader.read(-1))
    finally:
        writer.close()
    assert response.status == 200
    return response.header("x-backend") or "?"


def test_ip_hash_keys_on_the_client_network_and_spreads_networks() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="ip_hash")
            async with proxy(spec) as server:
                port = port_of(server)
                placement: dict[int, set[str]] = {}
                for network in range(1, 61):
                    for host in (1, 77, 254):  # three clients of one /24
                        name = await backend_for_source(port, f"127.0.{network}.{host}")
                        placement.setdefault(network, set()).add(name)
        assert all(len(names) == 1 for names in placement.values()), placement
        shares = Counter(next(iter(names)) for names in placement.values())
        # 60 networks on a ketama ring of 3 equal targets: each gets a fair part.
        assert set(shares) == {"a", "b", "c"}, shares
        assert min(shares.values()) >= 5, shares

    run(main())


# -- random_two and least_time ---------------------------------------------------------------


def test_random_two_gives_every_backend_a_fair_share() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="random_two")
            async with proxy(spec) as server:
                names = await served_by(port_of(server), 300, clients=3)
        counts = Counter(names)
        assert sum(counts.values()) == 300
        # Expected 100 each; with idle targets a pick is a weighted draw, so
        # 60 is over 5 standard deviations below the mean.
        assert all(counts[n] >= 60 for n in "abc"), counts

    run(main())


def test_random_two_follows_weights() -> None:
    async def main() -> None:
        async with backends("a", "b") as (a, b):
            spec = weighted((a.address, 4), (b.address, 1), balance="random_two")
            async with proxy(spec) as server:
                counts = Counter(await served_by(port_of(server), 300, clients=1))
        # Sequential requests: both draws are weighted and ties keep the first,
        # so "a" is expected well above half; "b" must still be served.
        assert counts["a"] > 2 * counts["b"] > 0, counts

    run(main())


def delayed_backend(name: str, delay: float) -> Backend:
    async def handle(req: Request) -> bytes:
        await asyncio.sleep(delay)
        return ok(name.encode(), headers={"X-Backend": name})

    return Backend(name=name, handler=handle)


def test_least_time_serves_every_backend_and_gives_the_slow_one_clearly_fewer() -> None:
    async def main() -> None:
        fast, slow = delayed_backend("fast", 0.0), delayed_backend("slow", 0.02)
        await fast.start()
        await slow.start()
        try:
            spec = service(fast.address, slow.address, balance="least_time")
            async with proxy(spec) as server:
                counts = Counter(await served_by(port_of(server), 200, clients=8))
        finally:
            await fast.stop()
            await slow.stop()
        assert sum(counts.values()) == 200
        assert counts["slow"] >= 1, counts
        assert counts["fast"] >= 1, counts
        # 20 ms against ~1 ms: the slow one's expected wait is far higher at any
        # in-flight count the 8 clients can make, so it gets a small share.
        assert counts["slow"] * 4 < counts["fast"], counts

    run(main())


# -- ip_hash behind another load balancer ------------------------------------------------------

# The test's own connections come from 127.0.0.1: that peer is the load balancer in front.
BEHIND_A_BALANCER = ProxySettings(trusted_proxies=("127.0.0.1/32", "10.0.0.0/8"))


async def backend_for_forwarded(port: int, forwarded_for: str) -> str:
    response = await request(port, headers={"X-Forwarded-For": forwarded_for})
    assert response.status == 200, response
    return response.header("x-backend") or "?"


def test_ip_hash_behind_a_trusted_balancer_keys_on_the_forwarded_client() -> None:
    async def main() -> dict[int, set[str]]:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="ip_hash")
            async with proxy(spec, settings=BEHIND_A_BALANCER) as server:
                port = port_of(server)
                placement: dict[int, set[str]] = {}
                for network in range(1, 61):
                    for host in (1, 77):  # two clients of one /24
                        name = await backend_for_forwarded(port, f"198.51.{network}.{host}")
                        placement.setdefault(network, set()).add(name)
                return placement

    placement = run(main())
    assert all(len(names) == 1 for names in placement.values()), placement
    shares = Counter(next(iter(names)) for names in placement.values())
    assert set(shares) == {"a", "b", "c"}, shares
    assert min(shares.values()) >= 5, shares


def test_ip_hash_takes_the_rightmost_untrusted_forwarded_address() -> None:
    # nginx realip with real_ip_recursive on: trusted hops (10/8 here) are
    # skipped from the right; what the client itself wrote further left is not believed.
    async def main() -> list[str]:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="ip_hash")
            async with proxy(spec, settings=BEHIND_A_BALANCER) as server:
                port = port_of(server)
                chains = [
                    "203.0.113.7",
                    "203.0.113.7, 10.1.2.3",
                    "6.6.6.6, 203.0.113.7, 10.1.2.3, 10.9.9.9",
                ]
                names = [await backend_for_forwarded(port, chain) for chain in chains]
                # Other clients land elsewhere: the forged 6.6.6.6 was not what decided.
                others = {await backend_for_forwarded(port, f"192.0.{n}.1") for n in range(30)}
                assert len(others) == 3
                return names

    assert len(set(run(main()))) == 1


def test_ip_hash_ignores_forwarded_for_from_an_untrusted_peer() -> None:
    async def main() -> None:
        async with backends("a", "b", "c") as (a, b, c):
            spec = service(a.address, b.address, c.address, balance="ip_hash")
            async with proxy(spec) as server:  # no trusted proxies: anyone could forge it
                port = port_of(server)
                names = {await backend_for_forwarded(port, f"198.51.{n}.1") for n in range(30)}
        assert len(names) == 1, names

    run(main())


def test_the_access_log_names_the_forwarded_client(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        async with backends("a") as (a,):
            settings = ProxySettings(
                trusted_proxies=BEHIND_A_BALANCER.trusted_proxies, access_log=str(log)
            )
            async with proxy(service(a.address), settings=settings) as server:
                port = port_of(server)
                await backend_for_forwarded(port, "6.6.6.6, 203.0.113.7, 10.1.2.3")
                await backend_for_forwarded(port, "10.0.0.1, 10.0.0.2")  # all trusted: leftmost
                await backend_for_forwarded(port, "not-an-ip, 10.0.0.2")  # stops at the garbage
        # What the app is told is unchanged: the whole chain plus the peer.
        assert (
            a.requests[0].header("x-forwarded-for") == "6.6.6.6, 203.0.113.7, 10.1.2.3, 127.0.0.1"
        )

    run(main())
    clients = [json.loads(line)["client"] for line in log.read_text().splitlines()]
    assert clients == ["203.0.113.7", "10.0.0.1", "10.0.0.2"]
