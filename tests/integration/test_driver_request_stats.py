"""`request_stats` through a real nginx and a real HAProxy (dataplane/request_stats.py).

With "canary" (the default) a driven proxy reports a service's requests to
zerodown only while the service has a canary, and every refused request
always; with "always", every request. The unit tests read the rendered
configs and map moves (tests/unit/test_request_stats.py); these send
requests through the proxies and read what `stats()` then says.

A refused request is the sentinel: the proxy logs it whatever the mode, in
order with the requests before it, so once the stats count it, the lines of
the requests sent before it have been read too (or were never written).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from harness import backends, request, reserved_port, run, service
from nginx_harness import nginx
from nginx_harness import port_of as nginx_port
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.runtime import command
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.request_stats import RequestStats
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec
from zerodown.routing import RoutingTable, ServiceSpec, Split
from zerodown.stats import ServiceStats, Stats

RULES = GuardSpec(block=BlockSpec(paths=(r"\.php$",)))
BLOCKED = "/x.php"
LOGGERS = {
    "nginx": "zerodown.dataplane.nginx.driver",
    "nginx-udp": "zerodown.dataplane.nginx.driver",  # its log as datagrams, not a file
    "haproxy": "zerodown.dataplane.haproxy",
}
WAIT = 3.0  # seconds: nginx flushes its log buffer every 250 ms, HAProxy's ring at once


async def send(port: int, count: int, path: str = "/") -> list[int]:
    return [(await request(port, path=path)).status for _ in range(count)]


async def blocked_seen(stats: Callable[[], Awaitable[Stats]], blocked: int) -> Stats:
    """The stats once the service counts `blocked` refusals (the sentinel read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    seen = -1
    while loop.time() < deadline:
        current = await stats()
        seen = current.services["web"].blocked
        if seen == blocked:
            return current
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"web counts {seen} blocked requests after {WAIT}s, {blocked} were refused: "
        "a refusal must be logged whatever request_stats says (its rule before the "
        "quiet access_log on nginx, before the silence rule on HAProxy); see the "
        "driver's log reader and the rendered config"
    )


def requests_of(web: ServiceStats) -> dict[str, int]:
    """Requests per target address, over both pools."""
    return {a: t.requests for pool in web.pools.values() for a, t in pool.targets.items()}


def histogram_total(web: ServiceStats) -> int:
    """Requests in the pools' latency histograms (0 when a pool has none)."""
    return sum(pool.totals.latency.buckets.get("+Inf", 0) for pool in web.pools.values())


def with_canary(plain: ServiceSpec, canary: str) -> ServiceSpec:
    return service(
        *(t.address for t in plain.stable.targets),
        canary=(canary,),
        split=Split(canary_weight=50),
        guard=RULES,
    )


# -- nginx -------------------------------------------------------------------


def test_nginx_counts_a_service_only_while_it_has_a_canary_and_refusals_always(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with backends("a", "c") as (a, c):
            plain = service(a.address, guard=RULES)
            async with nginx(tmp_path, plain, request_stats="canary") as plane:
                port = nginx_port(plane)
                assert await send(port, 5) == [200] * 5
                assert await send(port, 1, BLOCKED) == [403]
                stats = await blocked_seen(plane.stats, 1)
                assert stats.not_counted == ["web"]
                assert requests_of(stats.services["web"]) == {a.address: 0}
                assert len(a.requests) == 5  # served, not reported

                await plane.apply(RoutingTable(services=(with_canary(plain, c.address),)))
                assert (await plane.stats()).not_counted == []
                assert await send(port, 20) == [200] * 20
                assert await send(port, 1, BLOCKED) == [403]
                web = (await blocked_seen(plane.stats, 2)).services["web"]
                canary_served = len(c.requests)
                assert requests_of(web) == {a.address: 20 - canary_served, c.address: canary_served}
                pools = web.pools
                assert pools["stable"].totals.requests + pools["canary"].totals.requests == 20
                assert web.pools["canary"].totals.responses["2xx"] == canary_served
                assert 0 < canary_served < 20, "a 50% canary took none or all of 20 requests"

                await plane.apply(RoutingTable(services=(plain,)))
                assert await send(port, 6) == [200] * 6
                assert await send(port, 1, BLOCKED) == [403]
                stats = await blocked_seen(plane.stats, 3)
                assert stats.not_counted == ["web"]
                # The counts stand where the canary left them: the 6 were not reported.
                assert requests_of(stats.services["web"]) == {a.address: 20 - canary_served}
                assert len(a.requests) == 5 + 20 - canary_served + 6

    run(main())


# -- HAProxy -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def haproxy(
    tmp_path: Path,
    spec: ServiceSpec,
    mode: RequestStats | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> AsyncIterator[tuple[HaproxyDataPlane, int]]:
    """A started driver in front of `spec`; mode None: the settings' default."""
    settings = HaproxySettings(
        state_dir=tmp_path / "haproxy", stop_timeout=2.0, trusted_proxies=trusted_proxies
    )
    if mode is not None:
        settings = dataclasses.replace(settings, request_stats=mode)
    plane = HaproxyDataPlane(settings, RoutingTable(services=(spec,)))
    port = reserved_port()
    await plane.start([f"127.0.0.1:{port}"])
    try:
        yield plane, port
    finally:
        await plane.stop(2.0)


async def live_map(plane: HaproxyDataPlane) -> list[str]:
    """The keys of the counted map as the running HAProxy holds it (`show map`)."""
    path = plane.settings.counted_map
    reply = await command(plane.settings.stats_socket, f"show map {path}")
    # Each entry: "<id> <key> <value>"; an unknown map is an error message instead.
    rows = [line.split() for line in reply.splitlines() if line.strip()]
    assert all(len(row) == 3 and row[0].startswith("0x") for row in rows), reply
    return [row[1] for row in rows]


def test_haproxy_logs_a_service_only_while_it_has_a_canary_and_refusals_always(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with backends("a", "c") as (a, c):
            plain = service(a.address, guard=RULES)
            async with haproxy(tmp_path, plain) as (plane, port):
                assert plane.settings.request_stats == "canary"  # the default
                assert plane.settings.counted_map.read_text() == ""
                assert await live_map(plane) == []
                assert await send(port, 5) == [200] * 5
                assert await send(port, 1, BLOCKED) == [403]
                web = (await blocked_seen(plane.stats, 1)).services["web"]
                assert plane.latency.lines == 1  # the refusal only
                target = web.pools["stable"].targets[a.address]
                assert target.requests == 5  # show stat's count, logged or not
                assert target.responses["2xx"] == 5
                assert target.latency.buckets == {}  # show stat's mean, no histogram
                assert target.latency.count == 5

                pids = plane.pids
                await plane.apply(RoutingTable(services=(with_canary(plain, c.address),)))
                assert plane.pids == pids, "adding a canary reloaded HAProxy"
                assert plane.settings.counted_map.read_text() == "web 1\n"
                assert await live_map(plane) == ["web"]
                web = (await plane.stats()).services["web"]
                # A histogram from the first request on (not show stat's mean), empty yet.
                assert web.pools["canary"].targets[c.address].latency.buckets["+Inf"] == 0
                assert histogram_total(web) == 0
                assert await send(port, 20) == [200] * 20
                assert await send(port, 1, BLOCKED) == [403]
                web = (await blocked_seen(plane.stats, 2)).services["web"]
                assert plane.latency.lines == 1 + 20 + 1
                assert histogram_total(web) == 20
                canary_served = len(c.requests)
                assert 0 < canary_served < 20, "a 50% canary took none or all of 20 requests"
                canary = web.pools["canary"].totals
                assert canary.latency.buckets["+Inf"] == canary.requests == canary_served
                stable = web.pools["stable"].targets[a.address]
                assert stable.latency.buckets["+Inf"] == 20 - canary_served
                assert stable.requests == 5 + 20 - canary_served  # show stat counts on

                await plane.apply(RoutingTable(services=(plain,)))
                assert plane.settings.counted_map.read_text() == ""
                assert await live_map(plane) == []
                web = (await plane.stats()).services["web"]
                assert web.pools["stable"].targets[a.address].latency.buckets == {}
                assert await send(port, 6) == [200] * 6
                assert await send(port, 1, BLOCKED) == [403]
                web = (await blocked_seen(plane.stats, 3)).services["web"]
                assert plane.latency.lines == 1 + 20 + 1 + 1
                target = web.pools["stable"].targets[a.address]
                assert target.latency.buckets == {}
                assert target.requests == 5 + 20 - canary_served + 6

    run(main())


# -- "always" ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_always_reports_every_request_without_a_canary(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,):
            plain = service(a.address, guard=RULES)
            async with contextlib.AsyncExitStack() as stack:
                if kind == "nginx":
                    driver = await stack.enter_async_context(
                        nginx(tmp_path, plain, request_stats="always")
                    )
                    port, stats = nginx_port(driver), driver.stats
                else:
                    plane, port = await stack.enter_async_context(
                        haproxy(tmp_path, plain, "always")
                    )
                    stats = plane.stats
                    assert plane.settings.counted_map.read_text() == "web 1\n"
                assert await send(port, 7) == [200] * 7
                assert await send(port, 1, BLOCKED) == [403]
                current = await blocked_seen(stats, 1)
                assert current.not_counted == []
                web = current.services["web"]
                assert requests_of(web) == {a.address: 7}
                if kind == "haproxy":
                    assert histogram_total(web) == 7

    run(main())


# -- every kind of refusal, not counted --------------------------------------------


@pytest.mark.parametrize("kind", ["nginx", "nginx-udp", "haproxy"])
def test_every_kind_of_refusal_counts_while_the_service_is_not_counted(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # deny from 10.9/16, block *.php, and 1 request at once then 1 per 10 s per address.
    rules = GuardSpec(
        deny=("10.9.0.0/16",),
        block=BlockSpec(paths=(r"\.php$",)),
        rate_limit=RateLimitSpec(requests=1, per=10),
    )
    trusted = ("127.0.0.0/8",)

    async def main() -> None:
        async with backends("a") as (a,):
            plain = service(a.address, guard=rules)
            async with contextlib.AsyncExitStack() as stack:
                if kind.startswith("nginx"):
                    transport = "udp" if kind == "nginx-udp" else "file"
                    driver = await stack.enter_async_context(
                        nginx(
                            tmp_path,
                            plain,
                            request_stats="canary",
                            trusted_proxies=trusted,
                            log_transport=transport,
                        )
                    )
                    port, stats = nginx_port(driver), driver.stats
                else:
                    plane, port = await stack.enter_async_context(
                        haproxy(tmp_path, plain, trusted_proxies=trusted)
                    )
                    stats = plane.stats
                denied = {"X-Forwarded-For": "10.9.0.5"}
                said = [
                    (await request(port, headers=denied)).status,
                    (await request(port)).status,
                    (await request(port)).status,
                    (await request(port, path=BLOCKED)).status,  # the sentinel, last
                ]
                assert said == [403, 200, 429, 403]
                web = (await blocked_seen(stats, 1)).services["web"]
                assert (web.denied, web.rate_limited) == (1, 1), (
                    "a refusal of the service's rules was not counted while the service is "
                    "not counted: see how the proxy logs it (guard.py, _refusals_only)"
                )
                assert len(a.requests) == 1
        logged = sorted(r.getMessage() for r in caplog.records if r.name == LOGGERS[kind])
        assert logged == [
            "web: blocked a request from 127.0.0.1: block.paths \\.php$",
            "web: denied a request from 10.9.0.5: deny 10.9.0.0/16",
            "web: rate_limited a request from 127.0.0.1: rate_limit (1 at once, 0.1/s per address)",
        ]

    run(main())
