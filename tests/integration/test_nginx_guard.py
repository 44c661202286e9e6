"""allow/deny, block and rate_limit rendered for a real nginx, through real sockets.

nginx logs each refusal with its rule to the driver (render.LOG_FORMAT),
which counts it per service: the stats say what the log said.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from harness import backends, request, run, service, until
from nginx_harness import nginx, port_of
from zerodown.dataplane.nginx import NginxDataPlane
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec

RULES: dict[str, Any] = {
    "allow": ("10.0.0.0/8",),
    "deny": ("10.9.0.0/16",),
    "block": BlockSpec(
        paths=(r"^/\.git", r"\.php$"), methods=("TRACE", "DELETE"), user_agents=("sqlmap",)
    ),
}


async def counted(plane: NginxDataPlane, **expected: int) -> None:
    """Until the stats count what the log lines said (they arrive as datagrams)."""

    async def now() -> dict[str, int]:
        web = (await plane.stats()).services["web"]
        return {kind: getattr(web, kind) for kind in expected}

    seen: dict[str, int] = {}
    for _ in range(200):
        seen = await now()
        if seen == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"counted {seen}, expected {expected}")


def test_allow_deny_and_block_behind_a_trusted_proxy(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,):
            web = service(a.address, guard=GuardSpec(**RULES))
            async with nginx(tmp_path, web, trusted_proxies=("127.0.0.0/8",)) as plane:
                port = port_of(plane)
                statuses = []
                for client in ("10.1.2.3", "10.9.0.5", "192.0.2.1"):
                    r = await request(port, headers={"X-Forwarded-For": client})
                    statuses.append((r.status, r.body.split(b"\n")[0]))
                assert statuses == [
                    (200, b"a"),
                    (403, b"403 Forbidden: deny 10.9.0.0/16"),
                    (403, b"403 Forbidden: allow (not in 10.0.0.0/8)"),
                ]
                # The trusted proxy's chain goes on to the app, extended by its address.
                assert a.requests[0].header("x-forwarded-for") == "10.1.2.3, 127.0.0.1"
                inside = {"X-Forwarded-For": "10.1.2.3"}
                blocked = [
                    await request(port, path="/.git/config", headers=inside),
                    await request(port, path="/%2egit/HEAD", headers=inside),
                    await request(port, path="/index.php?x=1", headers=inside),
                    await request(port, "DELETE", "/", headers=inside),
                    await request(port, headers={**inside, "User-Agent": "SQLMap/1.7"}),
                ]
                assert [(r.status, r.body.split(b"\n")[0]) for r in blocked] == [
                    (403, b"403 Forbidden: block.paths ^/\\.git"),
                    (403, b"403 Forbidden: block.paths ^/\\.git"),
                    (403, b"403 Forbidden: block.paths \\.php$"),
                    (403, b"403 Forbidden: block.methods DELETE"),
                    (403, b"403 Forbidden: block.user_agents sqlmap"),
                ]
                # nginx answers TRACE 405 itself, before any rule: it never forwards one.
                assert (await request(port, "TRACE", "/", headers=inside)).status == 405
                assert blocked[0].header("x-zerodown-error") == "blocked"
                assert blocked[0].header("x-request-id")
                assert len(a.requests) == 1
                await counted(plane, denied=2, blocked=5, rate_limited=0)

    run(main())


def test_an_untrusted_peer_is_judged_by_its_own_address(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            backends("a") as (a,),
            nginx(tmp_path, service(a.address, guard=GuardSpec(**RULES))) as plane,
        ):
            r = await request(port_of(plane), headers={"X-Forwarded-For": "10.1.2.3"})
            assert r.status == 403  # 127.0.0.1 is not in 10.0.0.0/8
            assert a.requests == []

    run(main())


def test_rate_limit_429_with_retry_after_then_recovery_and_header_keys(tmp_path: Path) -> None:
    # 4 at once (3 + burst 1), then one every 0.1 s.
    limit = RateLimitSpec(requests=3, per=0.3, burst=1, key="header:X-Api-Key")

    async def main() -> None:
        async with backends("a") as (a,):
            web = service(a.address, guard=GuardSpec(rate_limit=limit))
            async with nginx(tmp_path, web) as plane:
                port = port_of(plane)
                first = [await request(port, headers={"X-Api-Key": "k1"}) for _ in range(6)]
                other = [
                    (await request(port, headers={"X-Api-Key": "k2"})).status for _ in range(5)
                ]
                plain = [(await request(port)).status for _ in range(5)]
                statuses = [r.status for r in first]
                # nginx counts time in whole milliseconds: a slow request lets a token back.
                assert statuses[:4] == [200] * 4, statuses
                assert 429 in statuses[4:], statuses
                assert other[:4] == plain[:4] == [200] * 4
                refused = first[statuses.index(429)]
                assert refused.header("retry-after") == "1"
                assert refused.body.startswith(b"429 Too Many Requests: rate_limit (4 at once")
                await asyncio.sleep(0.15)
                assert (await request(port, headers={"X-Api-Key": "k1"})).status == 200
                limited = statuses.count(429) + other.count(429) + plain.count(429)
                await counted(plane, rate_limited=limited)
                await until(lambda: len(a.requests) == 17 - limited, "requests through")

    run(main())
