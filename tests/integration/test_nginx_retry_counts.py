"""A retried try counted alike by nginx and the embedded proxy, through real sockets.

One target is a closed port (every connect refused), one answers. With
passive health off both planes keep sending the dead target its share of
first tries (smooth weighted round robin on both), each retried on the
live one: per target, nginx's counts read from its access log
(dataplane/nginx/accesslog.py) must be the embedded proxy's, with either
log transport. The judge (analysis/judge.py) then sees one error per
retried try on either plane.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from harness import backends, port_of, proxy, request, reserved_port, run, service
from nginx_harness import nginx
from zerodown.analysis.judge import Sample
from zerodown.routing import ServiceSpec
from zerodown.stats import Stats, TargetStats

REQUESTS = 10
# Every counter of a try's outcome; latency differs by nature (each plane
# times its own tries).
OUTCOMES = ("requests", "retries", "failures", "responses")


@contextlib.asynccontextmanager
async def plane(
    kind: str, tmp_path: Path, spec: ServiceSpec
) -> AsyncIterator[tuple[int, Callable[[], Awaitable[Stats]]]]:
    """(port, stats) of the embedded proxy, or of a real nginx logging to a
    "file" or by "udp"."""
    if kind == "embedded":
        async with proxy(spec) as server:

            async def stats() -> Stats:
                return server.stats()

            yield port_of(server), stats
    else:
        async with nginx(tmp_path / kind, spec, log_transport=kind) as driver:
            yield driver.addresses[0][1], driver.stats


def targets(stats: Stats) -> dict[str, TargetStats]:
    return stats.services["web"].pools["stable"].targets


def outcomes(found: dict[str, TargetStats]) -> dict[str, dict[str, object]]:
    return {address: {n: getattr(t, n) for n in OUTCOMES} for address, t in found.items()}


async def counted(kind: str, tmp_path: Path, spec: ServiceSpec) -> dict[str, TargetStats]:
    """Send REQUESTS GETs one after another; each target's stats once every
    request has its outcome (the nginx driver reads its log a little after
    each request ends: nginx buffers it up to 250 ms)."""
    async with plane(kind, tmp_path, spec) as (port, stats):
        statuses = [(await request(port)).status for _ in range(REQUESTS)]
        for _ in range(100):  # 3 s at most
            found = targets(await stats())
            if sum(map(ended, found.values())) >= REQUESTS:
                return found
            await asyncio.sleep(0.03)
    raise AssertionError(
        f"{kind}: {REQUESTS} requests answered {statuses}, the stats count only "
        f"{outcomes(found)}: the per-request log did not reach the driver"
    )


def ended(target: TargetStats) -> int:
    """The target's tries that have an outcome: answered, or failed for good."""
    return sum(target.responses.values()) + sum(target.failures.values())


@pytest.mark.parametrize("transport", ["file", "udp"])
def test_a_refused_try_retried_elsewhere_counts_as_on_the_embedded_proxy(
    transport: str, tmp_path: Path
) -> None:
    async def main() -> None:
        dead = f"127.0.0.1:{reserved_port()}"  # reserved: nothing listens there
        async with backends("live") as (live,):
            spec = service(dead, live.address, passive=None)
            embedded = await counted("embedded", tmp_path, spec)
            assert len(live.requests) == REQUESTS, "the embedded proxy: every GET answered"
            by_nginx = await counted(transport, tmp_path, spec)
            assert len(live.requests) == 2 * REQUESTS, "nginx: every GET answered"
        retried = embedded[dead].requests
        assert retried > 0, f"the dead target got no try, nothing was retried: {embedded}"
        assert embedded[dead].retries == retried, outcomes(embedded)
        assert outcomes(by_nginx) == outcomes(embedded), (
            f"nginx ({transport} log) and the embedded proxy count the same requests "
            "otherwise: see accesslog._count, how a retried try counts"
        )
        for address, target in by_nginx.items():
            errors = Sample.from_pool(target.counters()).errors
            assert errors == (retried if address == dead else 0), (address, errors)

    run(main())


def test_when_every_target_refuses_the_judge_sees_the_same_errors(tmp_path: Path) -> None:
    # The last try failed too: the embedded proxy counts a connect failure
    # there, nginx a 5xx (its own 502, which its log cannot tell from the
    # app's): per target, the same errors for the judge.
    async def main() -> None:
        spec = service(*(f"127.0.0.1:{reserved_port()}" for _ in range(2)), passive=None)
        errors = {}
        for kind in ("embedded", "file"):
            found = await counted(kind, tmp_path, spec)
            errors[kind] = {a: Sample.from_pool(t.counters()).errors for a, t in found.items()}
        assert errors["file"] == errors["embedded"], errors
        assert sum(errors["file"].values()) == 2 * REQUESTS, f"a retry and a 502 each: {errors}"

    run(main())
