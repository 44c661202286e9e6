"""TLS termination on the embedded data plane, through real sockets, with
certificates the test makes (trustme): versions, SNI, ALPN, the 308 from
plain HTTP, X-Forwarded-Proto, and a certificate reload that keeps open
connections."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from certs import CertFiles, TlsClient, client_context, write_cert
from harness import DEADLINE, Backend, backends, exchange, request, run, service
from zerodown.dataplane.detached import DetachedDataPlane
from zerodown.errors import ConfigError
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings, TlsSettings
from zerodown.routing import RoutingTable


def tls_settings(*pairs: CertFiles, redirect_http: bool = False) -> ProxySettings:
    certs = tuple((p.cert, p.key) for p in pairs)
    tls = TlsSettings(listen=("127.0.0.1:0",), certs=certs, redirect_http=redirect_http)
    return ProxySettings(tls=tls)


@contextlib.asynccontextmanager
async def tls_proxy(
    backend: Backend, settings: ProxySettings
) -> AsyncIterator[tuple[ProxyServer, int, int]]:
    """A proxy with one plain and one TLS listener: (server, plain port, TLS port)."""
    table = RoutingTable(services=(service(backend.address),))
    server = ProxyServer(settings, table)
    await server.start(["127.0.0.1:0", "127.0.0.1:0"])
    try:
        yield server, server.addresses[0][1], server.addresses[1][1]
    finally:
        await server.stop(timeout=1.0)


def replace_files(old: CertFiles, new: CertFiles) -> None:
    """Renew in place, as certbot's deploy hook or a secret mount does."""
    Path(old.cert).write_bytes(Path(new.cert).read_bytes())
    Path(old.key).write_bytes(Path(new.key).read_bytes())


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def site(ca: trustme.CA, tmp_path: Path) -> CertFiles:
    return write_cert(ca, tmp_path, "example.test")


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")]
)
def test_tls_12_and_13_are_served_with_forwarded_proto_https(
    ca: trustme.CA, site: CertFiles, version: ssl.TLSVersion, name: str
) -> None:
    async def main() -> None:
        async with backends("app") as (app,), tls_proxy(app, tls_settings(site)) as (_, _, port):
            client = await TlsClient.open(port, client_context(ca, version=version))
            first = await client.get("/a")
            second = await client.get("/b")  # keep-alive over TLS
            assert client.version == name
            assert client.ssl_object.selected_alpn_protocol() == "http/1.1"
            await client.close()
            assert (first.status, second.status) == (200, 200)
            assert [r.header("X-Forwarded-Proto") for r in app.requests] == ["https", "https"]
            assert app.connections == 1

    run(main())


def test_tls_11_and_h2_only_clients_are_refused(ca: trustme.CA, site: CertFiles) -> None:
    async def main() -> None:
        async with backends("app") as (app,), tls_proxy(app, tls_settings(site)) as (_, _, port):
            old = client_context(ca, version=ssl.TLSVersion.TLSv1_1)
            # The server ends the handshake (uvloop sends no alert): an EOF or a reset.
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await TlsClient.open(port, old)
            # A client offering h2 and http/1.1 gets http/1.1: no h2 on the embedded plane.
            both = await TlsClient.open(port, client_context(ca, alpn=("h2", "http/1.1")))
            assert both.ssl_object.selected_alpn_protocol() == "http/1.1"
            assert (await both.get()).status == 200
            await both.close()
            assert len(app.requests) == 1

    run(main())


def test_sni_picks_the_certificate_of_the_name_asked(
    ca: trustme.CA, site: CertFiles, tmp_path: Path
) -> None:
    other = write_cert(ca, tmp_path, "other", "other.test", "*.wild.test")

    async def main() -> None:
        settings = tls_settings(site, other)
        async with backends("app") as (app,), tls_proxy(app, settings) as (_, _, port):
            seen = {}
            for name in ("other.test", "a.wild.test", "example.test", "unknown.test"):
                context = client_context(ca)
                context.check_hostname = name != "unknown.test"
                client = await TlsClient.open(port, context, server_name=name)
                seen[name] = client.peer_names
                assert (await client.get(host=name)).status == 200
                await client.close()
            assert seen == {
                "other.test": ["other.test", "*.wild.test"],
                "a.wild.test": ["other.test", "*.wild.test"],
                "example.test": ["example.test"],
                "unknown.test": ["example.test"],  # no match: the first, `cert`
            }

    run(main())


def test_plain_http_is_redirected_with_308_and_never_reaches_the_app(
    ca: trustme.CA, site: CertFiles
) -> None:
    async def main() -> None:
        settings = tls_settings(site, redirect_http=True)
        async with backends("app") as (app,), tls_proxy(app, settings) as (_, plain, port):
            answer = await request(plain, "POST", "/form?x=1", body=b"a=b", host="Example.TEST:80")
            assert answer.status == 308
            assert answer.header("Location") == f"https://example.test:{port}/form?x=1"
            assert app.requests == []
            client = await TlsClient.open(port, client_context(ca))
            assert (await client.get("/form?x=1")).status == 200
            await client.close()
            assert len(app.requests) == 1

    run(main())


def test_plain_listener_says_http_whatever_an_untrusted_client_claims(site: CertFiles) -> None:
    async def main() -> None:
        async with backends("app") as (app,), tls_proxy(app, tls_settings(site)) as (_, plain, _):
            answer = await request(plain, headers={"X-Forwarded-Proto": "https"})
            assert answer.status == 200
            assert app.requests[0].all("X-Forwarded-Proto") == ["http"]

    run(main())


def test_reload_serves_the_new_certificate_and_keeps_open_connections(
    ca: trustme.CA, site: CertFiles, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            backends("app") as (app,),
            tls_proxy(app, tls_settings(site)) as (server, _, port),
        ):
            before = await TlsClient.open(port, client_context(ca))
            assert (await before.get()).status == 200
            old_serial = before.ssl_object.getpeercert()["serialNumber"]  # type: ignore[index]
            (tmp_path / "new").mkdir()
            renewed = write_cert(ca, tmp_path / "new", "example.test")
            replace_files(site, renewed)
            assert server.reload_tls()
            after = await TlsClient.open(port, client_context(ca))
            assert after.ssl_object.getpeercert()["serialNumber"] != old_serial  # type: ignore[index]
            assert (await after.get()).status == 200
            assert (await before.get()).status == 200  # the open connection was kept
            await before.close()
            await after.close()
            assert len(app.requests) == 3

    run(main())


def test_a_detached_multi_worker_plane_reloads_in_every_worker(
    ca: trustme.CA, site: CertFiles, tmp_path: Path
) -> None:
    """The whole chain `zerodown serve` drives: controller -> host -> supervisor
    -> 2 workers, each with its share of the TLS listener (SO_REUSEPORT)."""

    async def main() -> None:
        async with backends("app") as (app,):
            table = RoutingTable(services=(service(app.address),))
            plane = DetachedDataPlane(tls_settings(site), table, 2, tmp_path / "state")
            await plane.start(["127.0.0.1:0", "127.0.0.1:0"])
            try:
                port = plane.addresses[1][1]
                kept = [await TlsClient.open(port, client_context(ca)) for _ in range(6)]
                serials = {c.ssl_object.getpeercert()["serialNumber"] for c in kept}  # type: ignore[index]
                (tmp_path / "new").mkdir()
                replace_files(site, write_cert(ca, tmp_path / "new", "example.test"))
                await plane.reload_tls()
                fresh = [await TlsClient.open(port, client_context(ca)) for _ in range(6)]
                renewed = {c.ssl_object.getpeercert()["serialNumber"] for c in fresh}  # type: ignore[index]
                assert len(serials) == len(renewed) == 1
                assert serials != renewed  # whichever worker accepted, the new one
                for client in kept + fresh:
                    assert (await client.get()).status == 200  # none was dropped
                    await client.close()
                assert [r.header("X-Forwarded-Proto") for r in app.requests] == ["https"] * 12
            finally:
                await plane.stop(1.0)

    run(main())


def test_a_reload_with_a_bad_key_keeps_the_old_certificate(
    ca: trustme.CA, site: CertFiles, tmp_path: Path
) -> None:
    async def main() -> None:
        async with backends("app") as (app,), tls_proxy(app, tls_settings(site)) as proxied:
            server, _, port = proxied
            other = write_cert(ca, tmp_path, "other", "other.test")
            Path(site.key).write_bytes(Path(other.key).read_bytes())  # noqa: ASYNC240
            with pytest.raises(ConfigError) as raised:
                server.reload_tls()
            assert raised.value.key == "proxy.tls.key"
            client = await TlsClient.open(port, client_context(ca))
            assert client.peer_names == ["example.test"]
            assert (await client.get()).status == 200
            await client.close()

    run(main())


def test_a_silent_or_plain_http_client_on_the_tls_listener_is_cut(site: CertFiles) -> None:
    """A handshake has header_timeout, as a request head does (no slowloris
    over TLS); plain HTTP on the TLS port never reaches the app."""

    async def main() -> None:
        settings = dataclasses.replace(tls_settings(site), header_timeout=0.2)
        async with backends("app") as (app,), tls_proxy(app, settings) as (server, _, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(DEADLINE):
                assert await reader.read() == b""  # closed, nothing sent
            assert asyncio.get_running_loop().time() - started < 2.0
            writer.close()
            answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
            assert not answer.startswith(b"HTTP/1.1 200")
            assert app.requests == []
            assert not server.connections

    run(main())
