"""`[proxy.tls]` on the HAProxy and nginx drivers, against the real proxies,
with certificates the test makes: TLS 1.2 and 1.3 served and 1.1 refused,
h2 offered by ALPN, SNI, the 308 from plain HTTP, X-Forwarded-Proto, and a
certificate reload (the proxy's graceful reload) that serves the new
certificate while a request in flight completes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from certs import CertFiles, TlsClient, client_context, write_cert
from harness import (
    Backend,
    Request,
    backends,
    ok,
    read_response,
    request,
    reserved_port,
    run,
    service,
    until,
)
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings
from zerodown.dataplane.nginx.tls import NginxTls
from zerodown.proxy.settings import TlsSettings
from zerodown.proxy.tls import check_all
from zerodown.routing import RoutingTable

DRIVERS = ["haproxy", "nginx"]


def make_plane(kind: str, state: Path, table: RoutingTable, tls: TlsSettings) -> ManagedDataPlane:
    if kind == "haproxy":
        return HaproxyDataPlane(HaproxySettings(state_dir=state, stop_timeout=2.0, tls=tls), table)
    names = tuple(c.names for c in check_all(tls))
    settings = NginxSettings(state_dir=state, reload_timeout=5.0, tls=NginxTls(tls, names))
    plane = NginxDataPlane(settings, table)
    return plane


async def slow_or_ok(req: Request) -> bytes:
    if req.path == "/slow":
        await asyncio.sleep(1.0)
    return ok(b"app")


@pytest.mark.parametrize("kind", DRIVERS)
def test_tls_on_the_driver(kind: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    site = write_cert(ca, tmp_path, "example.test")
    other = write_cert(ca, tmp_path, "other", "other.test")
    tls = TlsSettings(
        listen=(f"127.0.0.1:{reserved_port()}",),
        certs=((site.cert, site.key), (other.cert, other.key)),
        redirect_http=True,
    )
    plain_port, tls_port = reserved_port(), int(tls.listen[0].rpartition(":")[2])

    async def main() -> None:
        async with backends("app", handler=slow_or_ok) as (app,):
            table = RoutingTable(services=(service(app.address),))
            plane = make_plane(kind, tmp_path / "state", table, tls)
            await plane.start([f"127.0.0.1:{plain_port}", tls.listen[0]])
            try:
                if kind == "haproxy":  # chain and key in one file: for this user's eyes only
                    combined = tmp_path / "state" / "tls" / "0.pem"
                    assert combined.stat().st_mode & 0o777 == 0o600
                await _versions_and_alpn(ca, tls_port, app)
                await _sni(ca, tls_port)
                answer = await request(plain_port, "GET", "/a?b=1", host="example.test")
                assert answer.status == 308
                assert answer.header("Location") == f"https://example.test:{tls_port}/a?b=1"
                await _reload(ca, tmp_path, site, plane, tls_port, app)
                assert [r.header("X-Forwarded-Proto") for r in app.requests] == ["https"] * len(
                    app.requests
                )
            finally:
                await plane.stop(2.0)

    run(main())


async def _versions_and_alpn(ca: trustme.CA, port: int, app: Backend) -> None:
    for version, name in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
        client = await TlsClient.open(port, client_context(ca, version=version))
        assert client.version == name
        assert (await client.get("/v")).status == 200
        await client.close()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await TlsClient.open(port, client_context(ca, version=ssl.TLSVersion.TLSv1_1))
    h2 = await TlsClient.open(port, client_context(ca, alpn=("h2", "http/1.1")))
    assert h2.ssl_object.selected_alpn_protocol() == "h2"  # HTTP/2 where the proxy has it
    await h2.close()
    assert len(app.requests) == 2


async def _sni(ca: trustme.CA, port: int) -> None:
    for name, served in (("other.test", ["other.test"]), ("example.test", ["example.test"])):
        client = await TlsClient.open(port, client_context(ca), server_name=name)
        assert client.peer_names == served
        assert (await client.get(host=name)).status == 200
        await client.close()


async def _reload(
    ca: trustme.CA,
    tmp_path: Path,
    site: CertFiles,
    plane: ManagedDataPlane,
    port: int,
    app: Backend,
) -> None:
    before = await TlsClient.open(port, client_context(ca))
    old_serial = before.ssl_object.getpeercert()["serialNumber"]  # type: ignore[index]
    before.writer.write(b"GET /slow HTTP/1.1\r\nHost: example.test\r\n\r\n")
    await until(lambda: any(r.path == "/slow" for r in app.requests), "/slow at the app")
    (tmp_path / "new").mkdir()
    renewed = write_cert(ca, tmp_path / "new", "example.test")
    Path(site.cert).write_bytes(Path(renewed.cert).read_bytes())  # noqa: ASYNC240
    Path(site.key).write_bytes(Path(renewed.key).read_bytes())  # noqa: ASYNC240
    await plane.reload_tls()
    after = await TlsClient.open(port, client_context(ca))
    assert after.ssl_object.getpeercert()["serialNumber"] != old_serial  # type: ignore[index]
    assert (await after.get()).status == 200
    await after.close()
    assert (await read_response(before.reader)).status == 200  # in flight across the reload
    await before.close()
