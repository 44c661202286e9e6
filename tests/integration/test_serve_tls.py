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

from certs import write_cert

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


def test_an_expired_or_unreadable_certificate_stops_serve(tmp_path: Path) -> None:
    ca = trustme.CA()
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    old = write_cert(ca, tmp_path, "old", "example.test", not_after=past)
    done = serve_with(tmp_path, "embedded", old.cert, old.key)
    assert done.returncode != 0
    assert f"proxy.tls.cert: {old.cert} expired on {past:%Y-%m-%d}" in done.stderr
    missing = serve_with(tmp_path, "embedded", str(tmp_path / "none.pem"), old.key)
    assert "proxy.tls.cert: cannot read" in missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr
