"""Refusals and cache hits counted per service, and each refusal logged
with its rule, on every data plane, through real sockets: the embedded
proxy, a real nginx and a real HAProxy (their per-request logs read by the
drivers), in front of one small app.

The embedded proxy names the rule in its access log (test_proxy_access_log);
the drivers log it through `logging`, checked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import Request, backends, ok, port_of, proxy, request, reserved_port, run, service
from nginx_harness import nginx
from zerodown.cachespec import CacheSpec
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec
from zerodown.stats import ServiceStats, Stats

PLANES = ("embedded", "nginx", "haproxy")
# nginx's log as JSON datagrams (log_transport "udp") rather than its default file.
NGINX_UDP = "nginx-udp"
TRUSTED = ("127.0.0.0/8",)
RULES = GuardSpec(
    allow=("10.0.0.0/8",),
    deny=("10.9.0.0/16",),
    block=BlockSpec(paths=(r"^/\.git", r"\.php$")),
)
INSIDE = {"X-Forwarded-For": "10.1.2.3"}
LOGGERS = {
    "nginx": "zerodown.dataplane.nginx.driver",
    NGINX_UDP: "zerodown.dataplane.nginx.driver",
    "haproxy": "zerodown.dataplane.haproxy",
}


@dataclass
class Plane:
    port: int
    stats: Callable[[], Awaitable[Stats]]
    apply: Callable[[RoutingTable], Awaitable[None]]


@contextlib.asynccontextmanager
async def plane(kind: str, tmp_path: Path, spec: ServiceSpec) -> AsyncIterator[Plane]:
    if kind == "embedded":
        async with proxy(spec, settings=ProxySettings(trusted_proxies=TRUSTED)) as server:

            async def stats() -> Stats:
                return server.stats()

            yield Plane(port_of(server), stats, server.apply)
    elif kind in ("nginx", NGINX_UDP):
        transport = "udp" if kind == NGINX_UDP else "file"
        async with nginx(
            tmp_path / "nginx", spec, trusted_proxies=TRUSTED, log_transport=transport
        ) as driver:
            yield Plane(driver.addresses[0][1], driver.stats, driver.apply)
    else:
        settings = HaproxySettings(
            state_dir=tmp_path / "haproxy", stop_timeout=2.0, trusted_proxies=TRUSTED
        )
        haproxy = HaproxyDataPlane(settings, RoutingTable(services=(spec,)))
        port = reserved_port()
        await haproxy.start([f"127.0.0.1:{port}"])
        try:
            yield Plane(port, haproxy.stats, haproxy.apply)
        finally:
            await haproxy.stop(2.0)


async def cacheable(req: Request) -> bytes:
    return ok(b"page " + req.path.encode(), headers={"Cache-Control": "max-age=60"})


async def counted(p: Plane, **expected: int) -> ServiceStats:
    """The service's entry once it counts `expected`: the drivers read their
    proxy's log a little after each request ends (nginx buffers up to 250 ms)."""
    seen: dict[str, int] = {}
    for _ in range(100):  # 3 s at most
        web = (await p.stats()).services["web"]
        seen = {name: getattr(web, name) for name in expected}
        if seen == expected:
            return web
        await asyncio.sleep(0.03)
    raise AssertionError(
        f"the stats count {seen}, the requests sent make {expected}: the data plane's "
        "per-request log did not reach its driver, or a line was not counted (see its parser)"
    )


def refusals_logged(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    """The driver's refusal records, one per request: identical requests read
    at once are one record ending "(N requests)", counted N times here."""
    each = []
    for record in caplog.records:
        if record.name != LOGGERS.get(kind):
            continue
        message = record.getMessage()
        said, _, more = message.rpartition(" (")
        if more.endswith(" requests)") and more.split()[0].isdigit():
            each += [said] * int(more.split()[0])
        else:
            each.append(message)
    return sorted(each)


@pytest.mark.parametrize("kind", [*PLANES, NGINX_UDP])
def test_refusals_and_cache_hits_are_counted_per_service_and_logged_with_the_rule(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with backends("a", handler=cacheable) as (a,):
            spec = service(a.address, guard=RULES, cache=CacheSpec())
            async with plane(kind, tmp_path, spec) as p:
                statuses = [
                    (await request(p.port, headers={"X-Forwarded-For": "10.9.0.5"})).status,
                    (await request(p.port, headers={"X-Forwarded-For": "192.0.2.1"})).status,
                    (await request(p.port, path="/.git/config", headers=INSIDE)).status,
                    (await request(p.port, path="/%2egit/HEAD", headers=INSIDE)).status,
                    (await request(p.port, path="/x.php", headers=INSIDE)).status,
                ]
                assert statuses == [403] * 5
                pages = [await request(p.port, path="/page", headers=INSIDE) for _ in range(5)]
                assert [r.header("x-cache") for r in pages] == ["MISS"] + ["HIT"] * 4
                posted = await request(p.port, "POST", "/page", headers=INSIDE, body=b"x")
                assert posted.status == 200
                assert len(a.requests) == 2  # the first GET and the POST
                # HAProxy's own counters (show stat) count lookups, which a POST is not.
                misses = 1 if kind == "haproxy" else 2
                web = await counted(
                    p, denied=2, blocked=3, rate_limited=0, cache_hits=4, cache_misses=misses
                )
                assert web.pools["stable"].totals.requests == 2
        if kind == "embedded":
            return
        assert refusals_logged(caplog, kind) == [
            "web: blocked a request from 10.1.2.3: block.paths \\.php$",
            "web: blocked a request from 10.1.2.3: block.paths ^/\\.git",
            "web: blocked a request from 10.1.2.3: block.paths ^/\\.git",
            "web: denied a request from 10.9.0.5: deny 10.9.0.0/16",
            "web: denied a request from 192.0.2.1: allow (not in 10.0.0.0/8)",
        ]

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_rate_limited_requests_are_counted_and_logged_and_no_cache_counts_without_cache(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # 2 at once, then one per 5 s: of 6 requests at once, 4 are refused.
    limit = RateLimitSpec(requests=2, per=10)

    async def main() -> None:
        async with backends("a") as (a,):
            spec = service(a.address, guard=GuardSpec(rate_limit=limit))
            async with plane(kind, tmp_path, spec) as p:
                statuses = [(await request(p.port)).status for _ in range(6)]
                assert statuses == [200, 200, 429, 429, 429, 429]
                await counted(p, rate_limited=4, denied=0, blocked=0, cache_hits=0, cache_misses=0)
                assert len(a.requests) == 2
        if kind == "embedded":
            return
        rule = "rate_limit (2 at once, 0.2/s per address)"
        said = f"web: rate_limited a request from 127.0.0.1: {rule}"
        assert refusals_logged(caplog, kind) == [said] * 4

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_cache_counts_go_on_across_a_switch_to_another_release(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", handler=cacheable) as (a,):
            spec = service(a.address, cache=CacheSpec())
            async with plane(kind, tmp_path, spec) as p:
                said = [(await request(p.port, path="/page")).header("x-cache") for _ in range(3)]
                assert said == ["MISS", "HIT", "HIT"]
                await counted(p, cache_hits=2, cache_misses=1)
                # Another release takes the traffic: the cache starts empty, its counts do not.
                target = spec.stable.targets[0].model_copy(update={"version": "v2"})
                moved = spec.model_copy(update={"stable": PoolSpec(targets=(target,))})
                await p.apply(RoutingTable(services=(moved,)))
                said = [(await request(p.port, path="/page")).header("x-cache") for _ in range(2)]
                assert said == ["MISS", "HIT"]
                await counted(p, cache_hits=3, cache_misses=2)

    run(main())
