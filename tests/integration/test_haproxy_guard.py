"""allow/deny, block and rate_limit rendered for a real HAProxy, through real sockets.

The body of each refusal names its rule (as the embedded proxy's does), and
the backend counts what got through; the driver's counts and log of each
refusal, from HAProxy's per-request log, are test_edge_counters'.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from haproxy_harness import haproxy as driven
from haproxy_harness import port_of
from harness import Backend, backends, request, run, service
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec

RULES: dict[str, Any] = {
    "allow": ("10.0.0.0/8",),
    "deny": ("10.9.0.0/16",),
    "block": BlockSpec(paths=(r"^/\.git", r"\.php$"), methods=("TRACE",), user_agents=("sqlmap",)),
}


@contextlib.asynccontextmanager
async def haproxy(
    tmp_path: Path, backend: Backend, trusted: tuple[str, ...] = (), **guard: Any
) -> AsyncIterator[int]:
    web = service(backend.address, guard=GuardSpec(**guard))
    async with driven(tmp_path, web, trusted_proxies=trusted) as plane:
        yield port_of(plane)


def test_allow_deny_and_block_behind_a_trusted_proxy(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,), haproxy(tmp_path, a, ("127.0.0.0/8",), **RULES) as port:
            statuses = []
            for client in ("10.1.2.3", "10.9.0.5", "192.0.2.1"):
                r = await request(port, headers={"X-Forwarded-For": client})
                statuses.append((r.status, r.body.split(b"\n")[0]))
            assert statuses == [
                (200, b"a"),
                (403, b"403 Forbidden: deny 10.9.0.0/16"),
                (403, b"403 Forbidden: allow (not in 10.0.0.0/8)"),
            ]
            inside = {"X-Forwarded-For": "10.1.2.3"}
            blocked = [
                await request(port, path="/.git/config", headers=inside),
                await request(port, path="/%2egit/HEAD", headers=inside),
                await request(port, path="/index.php?x=1", headers=inside),
                await request(port, "TRACE", "/", headers=inside),
                await request(port, headers={**inside, "User-Agent": "SQLMap/1.7"}),
            ]
            assert [(r.status, r.body.split(b"\n")[0]) for r in blocked] == [
                (403, b"403 Forbidden: block.paths ^/\\.git"),
                (403, b"403 Forbidden: block.paths ^/\\.git"),
                (403, b"403 Forbidden: block.paths \\.php$"),
                (403, b"403 Forbidden: block.methods TRACE"),
                (403, b"403 Forbidden: block.user_agents sqlmap"),
            ]
            assert blocked[0].header("x-zerodown-error") == "blocked"
            assert len(a.requests) == 1

    run(main())


def test_an_untrusted_peer_is_judged_by_its_own_address(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a") as (a,), haproxy(tmp_path, a, **RULES) as port:
            r = await request(port, headers={"X-Forwarded-For": "10.1.2.3"})
            assert r.status == 403  # 127.0.0.1 is not in 10.0.0.0/8
            assert a.requests == []

    run(main())


def test_rate_limit_429_with_retry_after_then_recovery_and_header_keys(tmp_path: Path) -> None:
    # 4 at once (3 + burst 1); HAProxy: 4 per sliding window of 0.4 s.
    limit = RateLimitSpec(requests=3, per=0.3, burst=1, key="header:X-Api-Key")

    async def main() -> None:
        async with backends("a") as (a,), haproxy(tmp_path, a, rate_limit=limit) as port:
            first = [await request(port, headers={"X-Api-Key": "k1"}) for _ in range(6)]
            other = [(await request(port, headers={"X-Api-Key": "k2"})).status for _ in range(5)]
            plain = [(await request(port)).status for _ in range(5)]
            assert [r.status for r in first] == [200, 200, 200, 200, 429, 429]
            assert other == plain == [200, 200, 200, 200, 429]
            assert first[-1].header("retry-after") == "1"
            assert first[-1].body.startswith(b"429 Too Many Requests: rate_limit (4 at once")
            await asyncio.sleep(0.85)  # two windows: the count (refusals too) is gone
            assert (await request(port, headers={"X-Api-Key": "k1"})).status == 200
            assert len(a.requests) == 13

    run(main())
