"""`[proxy] proxy_protocol` rendered for a real HAProxy and a real nginx.

127.0.0.1 is the trusted balancer; 127.0.0.2 (loopback too, on Linux) is
a peer that is not. As on the embedded proxy (test_proxy_protocol.py), the
client a trusted header names is the one the app sees and allow/deny judge;
nginx differs in demanding a header from every peer (docs/config.md).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from certs import client_context, write_cert
from haproxy_harness import haproxy as driven
from haproxy_harness import port_of as haproxy_port
from harness import backends, reserved_port, run, service
from nginx_harness import nginx, port_of
from proxy_protocol_harness import BALANCER, GET, STRANGER, send, status, tls_get, v1, v2
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings
from zerodown.dataplane.nginx.tls import NginxTls
from zerodown.guardspec import GuardSpec
from zerodown.proxy.settings import TlsSettings
from zerodown.proxy.tls import check_all
from zerodown.routing import RoutingTable

GUARD = GuardSpec(deny=("192.0.2.0/24",))
TRUSTED = (f"{BALANCER}/32",)


@contextlib.asynccontextmanager
async def haproxy(tmp_path: Path, address: str) -> AsyncIterator[int]:
    web = service(address, guard=GUARD)
    async with driven(tmp_path, web, trusted_proxies=TRUSTED, proxy_protocol=True) as plane:
        yield haproxy_port(plane)


def test_haproxy_takes_the_client_from_a_trusted_header_only(tmp_path: Path) -> None:
    async def main() -> list[int | None]:
        async with backends("a") as (a,), haproxy(tmp_path, a.address) as port:
            answers = [
                await send(port, v1("10.1.2.3") + GET),
                await send(port, v2("192.0.2.9") + GET),  # denied by the header's address
                await send(port, GET),  # the balancer forgot its header: cut
                await send(port, v1("10.1.2.3") + GET, source=STRANGER),  # not HTTP: 400
                await send(port, GET, source=STRANGER),  # a plain client, served as itself
            ]
            assert [r.header("X-Forwarded-For") for r in a.requests] == ["10.1.2.3", STRANGER]
            return [status(raw) for raw in answers]

    assert run(main()) == [200, 403, None, 400, 200]


def test_nginx_takes_the_client_from_a_trusted_header_and_demands_one_of_all(
    tmp_path: Path,
) -> None:
    async def main() -> list[int | None]:
        async with backends("a") as (a,):
            web = service(a.address, guard=GUARD)
            async with nginx(tmp_path, web, trusted_proxies=TRUSTED, proxy_protocol=True) as plane:
                port = port_of(plane)
                answers = [
                    await send(port, v1("10.1.2.3") + GET),
                    await send(port, v2("192.0.2.9") + GET),
                    await send(port, GET),  # no header: nginx closes ("broken header")
                    await send(port, v1("10.1.2.3") + GET, source=STRANGER),  # refused: 444
                    await send(port, GET, source=STRANGER),  # every peer must send one
                ]
                assert [r.header("X-Forwarded-For") for r in a.requests] == ["10.1.2.3"]
                return [status(raw) for raw in answers]

    assert run(main()) == [200, 403, None, None, None]


def make_plane(kind: str, state: Path, table: RoutingTable, tls: TlsSettings) -> ManagedDataPlane:
    if kind == "haproxy":
        settings = HaproxySettings(
            state_dir=state, stop_timeout=2.0, tls=tls, trusted_proxies=TRUSTED, proxy_protocol=True
        )
        return HaproxyDataPlane(settings, table)
    names = tuple(c.names for c in check_all(tls))
    return NginxDataPlane(
        NginxSettings(
            state_dir=state,
            reload_timeout=5.0,
            tls=NginxTls(tls, names),
            trusted_proxies=TRUSTED,
            proxy_protocol=True,
        ),
        table,
    )


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_the_header_comes_before_the_tls_handshake_on_the_driver(kind: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    site = write_cert(ca, tmp_path, "example.test")
    tls = TlsSettings(listen=(f"127.0.0.1:{reserved_port()}",), certs=((site.cert, site.key),))
    port = int(tls.listen[0].rpartition(":")[2])

    async def main() -> None:
        async with backends("a") as (a,):
            table = RoutingTable(services=(service(a.address),))
            plane = make_plane(kind, tmp_path / "state", table, tls)
            await plane.start([f"127.0.0.1:{reserved_port()}", tls.listen[0]])
            try:
                context = client_context(ca, version=ssl.TLSVersion.TLSv1_3)
                response = await tls_get(port, v2("10.7.7.7"), context)
            finally:
                await plane.stop(2.0)
            assert response.status == 200
            (seen,) = a.requests
            assert seen.header("X-Forwarded-For") == "10.7.7.7"
            assert seen.header("X-Forwarded-Proto") == "https"

    run(main())
