"""`zerodown serve` with a bad `[proxy.tls]` certificate stops before it listens,
with one line naming the key and why, on every data plane, and no traceback."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from certs import TlsClient, client_context, write_cert
from harness import run
from zerodown.config.load import load_config
from zerodown.control.daemon import Daemon

DEADLINE = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_with(
    tmp_path: Path, dataplane: str, cert: str, key: str
) -> subprocess.CompletedProcess[str]:
    plain, secure = free_port(), free_port()
    config = tmp_path / "zerodown.toml"
    config.write_text(
        f"""
[proxy]
dataplane = "{dataplane}"
listen = ["127.0.0.1:{plain}"]
admin = "127.0.0.1:{free_port()}"
state_dir = "{tmp_path / "state"}"

[proxy.tls]
listen = ["127.0.0.1:{secure}"]
cert = "{cert}"
key = "{key}"

[services.web]
upstreams = ["127.0.0.1:9"]
health = false
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=dict(os.environ),
    )
    for port in (plain, secure):  # it stopped before it listened
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    return done


@pytest.mark.parametrize("dataplane", ["embedded", "haproxy", "nginx"])
def test_a_key_of_another_certificate_stops_serve_naming_the_key(
    tmp_path: Path, dataplane: str
) -> None:
    ca = trustme.CA()
    site, other = write_cert(ca, tmp_path, "site"), write_cert(ca, tmp_path, "other")
    done = serve_with(tmp_path, dataplane, site.cert, other.key)
    assert done.returncode != 0
    assert f"proxy.tls.key: {other.key} does not match the certificate {site.cert}" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_expired_certificate_stops_serve(tmp_path: Path) -> None:
    ca = trustme.CA()
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    old = write_cert(ca, tmp_path, "old", "example.test", not_after=past)
    done = serve_with(tmp_path, "embedded", old.cert, old.key)
    assert done.returncode != 0
    assert f"proxy.tls.cert: {old.cert} expired on {past:%Y-%m-%d}" in done.stderr
    assert "Traceback" not in done.stderr  # unreadable and other files: tests/unit/test_tls.py


def test_the_next_daemon_adopting_the_data_plane_reads_renewed_certificates(
    tmp_path: Path,
) -> None:
    """What a hot restart does (the exec aside): the daemon detaches, the next
    one adopts the running data plane and has it read the certificates again;
    SIGHUP's reload_tls does the same without a restart."""
    ca = trustme.CA()
    site = write_cert(ca, tmp_path, "site", "example.test")
    secure = free_port()
    config = tmp_path / "zerodown.toml"
    config.write_text(
        f"""
[proxy]
listen = ["127.0.0.1:{free_port()}"]
admin = "127.0.0.1:{free_port()}"
state_dir = "{tmp_path / "state"}"
[proxy.tls]
listen = ["127.0.0.1:{secure}"]
cert = "{site.cert}"
key = "{site.key}"
[services.web]
upstreams = ["127.0.0.1:9"]
health = false
"""
    )

    async def serial() -> int:
        client = await TlsClient.open(secure, client_context(ca))
        number = int(client.ssl_object.getpeercert()["serialNumber"], 16)  # type: ignore[index, arg-type]
        await client.close()
        return number

    def renew(name: str) -> None:
        (tmp_path / name).mkdir()
        fresh = write_cert(ca, tmp_path / name, "site", "example.test")
        Path(site.cert).write_bytes(Path(fresh.cert).read_bytes())
        Path(site.key).write_bytes(Path(fresh.key).read_bytes())

    async def main() -> None:
        first = Daemon(load_config(config), keep_instances=True)
        await first.start()
        before = await serial()
        await first.stop()  # keep_instances: the data plane serves on, detached
        renew("renewed")
        second = Daemon(load_config(config))
        await second.start()
        try:
            assert getattr(second.dataplane, "adopted", False)
            adopted = await serial()
            assert adopted != before
            renew("again")
            assert await second.reload_tls()  # what SIGHUP runs
            assert await serial() not in (before, adopted)
        finally:
            await second.stop()

    run(main())
