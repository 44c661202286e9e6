"""A deploy through a TLS listener drops nothing, end to end: `zerodown serve`
with `[proxy.tls]`, the demo app, load over HTTPS (keep-alive connections)
all through a rolling deploy, and a certificate renewed by SIGHUP in the
middle of it: new connections get the new certificate, the load's open ones
go on, and not one request fails."""

from __future__ import annotations

import http.client
import json
import signal
import ssl
from pathlib import Path

import pytest
import trustme

from certs import write_cert

from .conftest import ClusterFactory, Load, assert_no_failures, free_port, toml_str, wait_for

LOAD_RATE = 100.0  # requests/s over 4 keep-alive connections: TLS costs the 2 cores more


def serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection is offered."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.connect()
        assert conn.sock is not None
        return int(conn.sock.getpeercert()["serialNumber"], 16)  # type: ignore[index, arg-type]
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_rolling_deploy_over_tls_with_a_renewal_fails_no_request(
    make_cluster: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the load's default context
    (tmp_path / "certs").mkdir()
    site = write_cert(ca, tmp_path / "certs", "site", "example.test", "127.0.0.1")
    port = free_port()
    tls = (
        f'{{ listen = ["127.0.0.1:{port}"], cert = {toml_str(site.cert)}, '
        f"key = {toml_str(site.key)}, redirect_http = true }}"
    )
    # One instance: one rolling round (the app takes 2 s to start) keeps this under 20 s.
    cluster = make_cluster(proxy={"tls": tls}, instances="1")
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    plain = http.client.HTTPConnection("127.0.0.1", cluster.listen, timeout=5)
    plain.request("GET", "/headers?x=1", headers={"Host": "example.test"})
    moved = plain.getresponse()
    assert (moved.status, moved.getheader("Location")) == (
        308,
        f"https://example.test:{port}/headers?x=1",
    )
    plain.close()
    secure = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    secure.request("GET", "/headers", headers={"X-Forwarded-Proto": "http"})
    seen = json.loads(secure.getresponse().read())
    assert seen["x-forwarded-proto"] == "https"  # set by the proxy, the client's replaced
    secure.close()

    before = serial(port, context)
    with Load(f"https://127.0.0.1:{port}/", concurrency=4, rate=LOAD_RATE) as load:
        (tmp_path / "renewed").mkdir()
        renewed = write_cert(ca, tmp_path / "renewed", "site", "example.test", "127.0.0.1")
        Path(site.cert).write_bytes(Path(renewed.cert).read_bytes())
        Path(site.key).write_bytes(Path(renewed.key).read_bytes())
        assert cluster.daemon is not None
        cluster.daemon.send_signal(signal.SIGHUP)
        wait_for("the renewed certificate", lambda: serial(port, context) != before, 5)
        cluster.deploy_ok("v2")
    report = assert_no_failures(load)
    assert list(report.versions) == ["v1", "v2"], report.summary()
    assert "zerodown: TLS certificates reloaded" in cluster.log_path.read_text()
