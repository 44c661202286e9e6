"""`cache` on every data plane, through real sockets: the embedded proxy, a
real nginx and a real HAProxy in front of one small app whose answers say
how to cache them (by path) and count how often it was asked.

Each test runs once per data plane; where a plane's own cache differs from
the embedded one (HAProxy varies by few fields; nginx evicts in its cache
manager, which a reload wakes here), the test says so where it asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import (
    KeepAliveClient,
    Request,
    Response,
    backends,
    ok,
    port_of,
    proxy,
    request,
    reserved_port,
    run,
)
from nginx_harness import nginx
from zerodown.cachespec import CacheSpec
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

PLANES = ("embedded", "nginx", "haproxy")
KB = 1024
# HAProxy counts its cache in whole megabytes: 1 MB is the smallest there is.
CACHE = CacheSpec(max_size=1024 * KB, max_object_size=400 * KB)
LARGE = 300 * KB  # three fit in the cache, a fourth evicts one


@dataclass
class Plane:
    port: int
    apply: Callable[[RoutingTable], Awaitable[None]]
    pids: list[int] = field(default_factory=list)

    async def evict(self) -> None:
        """nginx's cache manager keeps max_size when it wakes: at its start,
        then about once per `inactive`. A reload starts a new one at once."""
        os.kill(self.pids[0], signal.SIGHUP)
        await asyncio.sleep(0.5)


def cached(address: str, version: str = "v1", cache: CacheSpec = CACHE) -> ServiceSpec:
    target = TargetSpec(address=address, version=version)
    return ServiceSpec(name="web", stable=PoolSpec(targets=(target,)), health=None, cache=cache)


@contextlib.asynccontextmanager
async def plane(kind: str, tmp_path: Path, spec: ServiceSpec) -> AsyncIterator[Plane]:
    table = RoutingTable(services=(spec,))
    if kind == "embedded":
        async with proxy(spec) as server:
            yield Plane(port_of(server), server.apply)
    elif kind == "nginx":
        async with nginx(tmp_path / "nginx", spec) as driver:
            yield Plane(driver.addresses[0][1], driver.apply, driver.pids)
    else:
        settings = HaproxySettings(state_dir=tmp_path / "haproxy", stop_timeout=2.0)
        haproxy = HaproxyDataPlane(settings, table)
        port = reserved_port()
        await haproxy.start([f"127.0.0.1:{port}"])
        try:
            yield Plane(port, haproxy.apply)
        finally:
            await haproxy.stop(2.0)


class App:
    """Answers by path; counts the requests it saw per path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: Counter[str] = Counter()

    async def __call__(self, req: Request) -> bytes:
        path = req.path.partition("?")[0]
        self.asked[path] += 1
        n = self.asked[path]
        body = f"{self.name}:{path}:{n}".encode()
        if path.startswith("/large"):
            body = body.ljust(LARGE, b".")
        if path in ("/huge", "/chunked-huge"):
            body = body.ljust(500 * KB, b".")
        control = {
            "/short": "max-age=1",
            "/no-store": "no-store",
            "/private": "private, max-age=60",
            "/public": "public, max-age=60",
            "/silent": "",
        }.get(path, "max-age=60")
        headers = {"Cache-Control": control, "ETag": f'"{n}"'} if control else {}
        if path.startswith("/chunked"):
            return chunked([body[i : i + 64 * KB] for i in range(0, len(body), 64 * KB)], control)
        if path == "/vary":
            # HAProxy varies by Accept-Encoding and Referer only (and, in 2.6,
            # serves no hit for Referer): the one all three carry.
            coding = req.header("accept-encoding") or "identity"
            headers |= {"Vary": "Accept-Encoding", "Content-Encoding": coding}
            body += f":{coding}".encode()
        return ok(body, headers=headers)


def chunked(pieces: list[bytes], control: str) -> bytes:
    """A response whose length is not known before its end."""
    head = f"HTTP/1.1 200 OK\r\nCache-Control: {control}\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head.encode() + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@contextlib.asynccontextmanager
async def app_behind(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Plane, App]]:
    app = App("a")
    async with backends("a", handler=app) as (a,), plane(kind, tmp_path, cached(a.address)) as p:
        yield p, app


async def get(port: int, path: str, **headers: str) -> Response:
    return await request(port, path=path, headers=headers)


def said(responses: list[Response]) -> list[tuple[str | None, bytes]]:
    return [(r.header("x-cache"), r.body[:40].rstrip(b".")) for r in responses]


@pytest.mark.parametrize("kind", PLANES)
def test_a_miss_then_hits_until_max_age_passes(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            first = [await get(p.port, "/short") for _ in range(3)]
            hit = ("HIT", b"a:/short:1")
            assert said(first) == [("MISS", b"a:/short:1"), hit, hit]
            assert first[0].header("x-request-id") != first[1].header("x-request-id")
            if kind != "nginx":  # nginx keeps no Age
                assert first[1].header("age") in ("0", "1")
            # Stale after one second: nginx and HAProxy count whole seconds.
            stored = asyncio.get_running_loop().time()
            for _ in range(50):  # 2.5 s at most
                again = await get(p.port, "/short")
                if again.header("x-cache") != "HIT":
                    break
                await asyncio.sleep(0.05)
            waited = asyncio.get_running_loop().time() - stored
            assert said([again]) == [("MISS", b"a:/short:2")]
            # HAProxy's second starts at the whole second it stored in: it may end sooner.
            assert (0.9 if kind == "embedded" else 0.0) < waited < 2.2, waited
            assert app.asked["/short"] == 2
            head = await request(p.port, "HEAD", "/short")
            assert head.status == 200

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_no_store_private_and_silent_answers_are_not_kept(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            for path in ("/no-store", "/private", "/silent"):
                answers = [await get(p.port, path) for _ in range(2)]
                assert said(answers) == [
                    ("MISS", f"a:{path}:1".encode()),
                    ("MISS", f"a:{path}:2".encode()),
                ]
            assert app.asked == Counter({"/no-store": 2, "/private": 2, "/silent": 2})

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_one_variant_per_value_of_the_field_a_response_varies_by(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            x, y = {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"}
            answers = [await get(p.port, "/vary", **h) for h in (x, y, x, y)]
            assert [(r.header("x-cache"), r.body.split(b":", 3)[-1]) for r in answers] == [
                ("MISS", b"gzip"),
                ("MISS", b"br"),
                ("HIT", b"gzip"),
                ("HIT", b"br"),
            ]
            assert app.asked["/vary"] == 2

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_an_answer_to_a_request_with_authorization_is_not_shared(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            token = {"Authorization": "Bearer alice"}
            mine = [await get(p.port, "/account", **token) for _ in range(2)]
            anyone = await get(p.port, "/account")
            assert said([*mine, anyone]) == [
                ("MISS", b"a:/account:1"),
                ("MISS", b"a:/account:2"),
                ("MISS", b"a:/account:3"),
            ]
            assert app.asked["/account"] == 3
            # `public` lets a shared cache keep it (RFC 9111 §3.5), for
            # requests without credentials: with them, the app is asked.
            await get(p.port, "/public", **token)
            kept = [await get(p.port, "/public"), await get(p.port, "/public", **token)]
            assert said(kept) == [("HIT", b"a:/public:1"), ("MISS", b"a:/public:2")]

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_an_object_over_the_limit_streams_through_uncached(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            answers = [await get(p.port, "/huge") for _ in range(2)]
            assert [len(r.body) for r in answers] == [500 * KB, 500 * KB]
            assert said(answers) == [("MISS", b"a:/huge:1"), ("MISS", b"a:/huge:2")]
            assert app.asked["/huge"] == 2

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_the_least_recently_used_answer_goes_when_the_cache_is_full(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            for path in ("/large-a", "/large-b", "/large-c", "/large-a"):
                await get(p.port, path)  # three stored, then a used again
            await get(p.port, "/large-d")  # over 1 MB: the least recently used goes
            if kind == "nginx":
                await p.evict()
            again = [await get(p.port, path) for path in ("/large-a", "/large-b")]
            assert said(again) == [("HIT", b"a:/large-a:1"), ("MISS", b"a:/large-b:2")]
            assert app.asked["/large-a"] == 1

    run(main())


@pytest.mark.parametrize("kind", PLANES)
def test_after_a_switch_to_another_release_the_old_answers_are_not_served(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        one, two = App("one"), App("two")
        async with (
            backends("one", handler=one) as (a,),
            backends("two", handler=two) as (b,),
            plane(kind, tmp_path, cached(a.address, "v1")) as p,
        ):
            before = [await get(p.port, "/page") for _ in range(2)]
            assert said(before) == [("MISS", b"one:/page:1"), ("HIT", b"one:/page:1")]
            await p.apply(RoutingTable(services=(cached(b.address, "v2"),)))
            after = [await get(p.port, "/page") for _ in range(2)]
            assert said(after) == [("MISS", b"two:/page:1"), ("HIT", b"two:/page:1")]
            assert (one.asked["/page"], two.asked["/page"]) == (1, 1)

    run(main())


# nginx checks max_object_size by Content-Length only (docs/config.md).
@pytest.mark.parametrize("kind", ["embedded", "haproxy"])
def test_a_chunked_answer_over_the_limit_is_not_kept_either(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind(kind, tmp_path) as (p, app):
            small = [await get(p.port, "/chunked") for _ in range(2)]
            assert said(small) == [("MISS", b"a:/chunked:1"), ("HIT", b"a:/chunked:1")]
            huge = [await get(p.port, "/chunked-huge") for _ in range(2)]
            assert [len(r.body) for r in huge] == [500 * KB, 500 * KB]
            assert said(huge) == [("MISS", b"a:/chunked-huge:1"), ("MISS", b"a:/chunked-huge:2")]
            assert app.asked["/chunked-huge"] == 2

    run(main())


def test_hits_keep_the_connection_alive_and_a_head_gets_the_head_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with app_behind("embedded", tmp_path) as (p, app), KeepAliveClient(p.port) as client:
            answers = [await client.request("GET", "/page") for _ in range(3)]
            head = await client.request("HEAD", "/page")
            after = await client.request("GET", "/other")
            assert said(answers) == [("MISS", b"a:/page:1"), *[("HIT", b"a:/page:1")] * 2]
            assert (head.status, head.header("x-cache"), head.body) == (200, "HIT", b"")
            assert head.header("content-length") == str(len(b"a:/page:1"))
            assert said([after]) == [("MISS", b"a:/other:1")]
            etag = answers[0].header("etag")
            current = await client.request("GET", "/page", headers={"If-None-Match": f"{etag}"})
            assert (current.status, current.header("x-cache"), current.body) == (304, "HIT", b"")
            assert current.header("etag") == etag
            assert current.header("content-length") is None
            assert app.asked == Counter({"/page": 1, "/other": 1})

    run(main())
