"""Sticky sessions on the nginx data plane, against a real nginx (issue 12).

Open-source nginx has no `sticky`: the driver maps the cookie to one small
upstream per target (dataplane/nginx/sticky.py). These check a client keeps
its target, a forged cookie is balanced, a draining target keeps its cookie
clients until the table drops it, then they move with a rewritten cookie and
no 5xx, and the access log still counts the service.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from harness import backends, request, run, service, until
from nginx_harness import nginx, port_of
from zerodown.proxy.sticky import new_key, token
from zerodown.routing import RoutingTable, StickySpec, with_target_state

STICKY = StickySpec(cookie="zd_route", ttl=90)
KEY = new_key()


def sticky(*addresses: str) -> RoutingTable:
    return RoutingTable(services=(service(*addresses, sticky=STICKY),))


async def get(port: int, cookie: str | None = None) -> tuple[int, str, str | None]:
    """(status, backend, the zd_route cookie it set, or None)."""
    response = await request(port, headers={"Cookie": cookie} if cookie else {})
    set_cookie = response.header("set-cookie")
    value = set_cookie.split(";")[0] if set_cookie else None
    return response.status, response.body.decode(), value


def test_a_client_keeps_its_target_and_a_forged_cookie_is_balanced(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            backends("a", "b", "c") as (a, b, c),
            nginx(
                tmp_path,
                *sticky(a.address, b.address, c.address).services,
                sticky_key=KEY,
                trusted_proxies=("127.0.0.1/32",),
            ) as plane,
        ):
            port = port_of(plane)
            first = await request(port)
            set_cookie = first.header("set-cookie")
            assert set_cookie is not None
            assert set_cookie.endswith("; Max-Age=90; Path=/; HttpOnly; SameSite=Lax")
            assert "127.0.0.1" not in set_cookie
            served = first.body.decode()
            cookie = set_cookie.split(";")[0]
            # The embedded proxy's token: one scheme for both data planes.
            address = {"a": a, "b": b, "c": c}[served].address
            assert cookie == f"zd_route={token(bytes.fromhex(KEY), 'web', address)}"
            seen = Counter([await get(port, cookie) for _ in range(20)])
            assert seen == {(200, served, None): 20}
            tls = await request(port, headers={"X-Forwarded-Proto": "https"})
            assert (tls.header("set-cookie") or "").endswith("; SameSite=Lax; Secure")

            forged = Counter(
                [(await get(port, "zd_route=AAAAAAAAAAAAAAAAAAAAAA"))[:2] for _ in range(30)]
            )
            assert forged == {(200, "a"): 10, (200, "b"): 10, (200, "c"): 10}
            # The per-target upstreams count for the service in the access log.
            counters = plane._counters.targets
            await until(lambda: sum(m.requests for m in counters.values()) >= 51, "the log")
            assert {service for service, _ in counters} == {"web"}

    run(main())


def test_a_draining_target_keeps_its_clients_until_dropped_then_they_move(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            nginx(tmp_path, *sticky(a.address, b.address).services, sticky_key=KEY) as plane,
        ):
            port = port_of(plane)
            cookie = f"zd_route={token(bytes.fromhex(KEY), 'web', a.address)}"
            assert Counter([await get(port, cookie) for _ in range(5)]) == {(200, "a", None): 5}
            await plane.apply(
                with_target_state(sticky(a.address, b.address), "web", a.address, "draining")
            )
            assert Counter([(await get(port))[1] for _ in range(6)]) == {"b": 6}
            assert Counter([await get(port, cookie) for _ in range(5)]) == {(200, "a", None): 5}

            await plane.apply(sticky(b.address))
            status, backend, rewritten = await get(port, cookie)
            assert (status, backend) == (200, "b")
            assert rewritten == f"zd_route={token(bytes.fromhex(KEY), 'web', b.address)}"
            assert Counter([await get(port, rewritten) for _ in range(5)]) == {(200, "b", None): 5}

    run(main())


def test_a_bound_target_that_refuses_connections_is_retried_and_rebound(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            backends("a", "b") as (a, b),
            nginx(tmp_path, *sticky(a.address, b.address).services, sticky_key=KEY) as plane,
        ):
            port = port_of(plane)
            cookie = f"zd_route={token(bytes.fromhex(KEY), 'web', a.address)}"
            await a.stop()  # gone before the table knows
            status, backend, rewritten = await get(port, cookie)
            assert (status, backend) == (200, "b")
            assert rewritten == f"zd_route={token(bytes.fromhex(KEY), 'web', b.address)}"

    run(main())
