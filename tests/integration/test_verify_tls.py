"""`zerodown verify` against a real `zerodown serve` whose `[proxy.tls]` has
`redirect_http = true`: every plain listener answers 308 to https, so the load
(and `--sessions`' virtual users) must go to the first TLS listener, over TLS,
without checking the certificate (the user's own, reached at 127.0.0.1).
A 308 is an answer, not a failure, to verify: aimed at a plain listener it
would report 0 failed while not one request reached the app."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from certs import write_cert
from harness import DEADLINE, reserved_port, run
from zerodown.cli.client import AdminClient, AdminError
from zerodown.verify import LoadSpec, run_load

NOT_CHECKED = "certificate not checked"  # what verify's line about the TLS edge says


@dataclass(frozen=True)
class TlsServe:
    config: Path
    plain: int  # answers 308 to https
    secure: int  # the first TLS listener
    ca: Path  # the CA that signed its certificate (for "example.test" only), PEM


@pytest.fixture(scope="module")
def tls_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServe]:
    """A serve redirecting plain HTTP to its TLS listener, web v1 deployed (the
    demo app, with sessions in its memory for --sessions)."""
    root = tmp_path_factory.mktemp("verify-tls")
    # Module-scoped: the ports stay reserved past the first test (the autouse
    # fixture frees a test's reservations), and only this serve listens on them.
    plain, secure, admin = reserved_port(), reserved_port(), reserved_port()
    ca = trustme.CA()
    site = write_cert(ca, root, "site", "example.test")  # not 127.0.0.1
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    app = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    config = root / "zerodown.toml"
    config.write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{plain}"]\nadmin = "127.0.0.1:{admin}"\n'
        f"state_dir = {json.dumps(str(root / 'state'))}\n\n"
        f'[proxy.tls]\nlisten = ["127.0.0.1:{secure}"]\nredirect_http = true\n'
        f"cert = {json.dumps(site.cert)}\nkey = {json.dumps(site.key)}\n\n"
        f'[services.web]\ncommand = "{app} --sessions memory"\ninstances = 1\n'
        'health = { path = "/health", interval = "100ms", rise = 1 }\n'
    )
    log_path = root / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            client = AdminClient(f"http://127.0.0.1:{admin}", None, DEADLINE)
            _wait_for(client, serve, log_path)
            deployed = client.wait(client.deploy("web", "v1"), DEADLINE)
            assert deployed["outcome"] == "succeeded", (deployed, log_path.read_text())
            yield TlsServe(config, plain, secure, root / "ca.pem")
        finally:
            serve.terminate()
            serve.wait(DEADLINE)


def _wait_for(client: AdminClient, serve: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        assert serve.poll() is None, f"serve exited: {log.read_text()}"
        try:
            client.status()
            return
        except AdminError:
            never = f"serve's admin API never answered in {DEADLINE} s: {log.read_text()}"
            assert time.monotonic() < deadline, never
            time.sleep(0.05)


def verify(serve: TlsServe, out: Path, *args: str, exits: int = 0) -> tuple[dict[str, Any], str]:
    """`zerodown verify` for 1 s on 2 connections: its report (OUT.json) and its stderr."""
    load = ["--duration", "1", "--concurrency", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "zerodown", "verify", "-c", str(serve.config), *load, *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
    )
    assert done.returncode == exits, f"verify exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return json.loads(out.with_suffix(".json").read_text()), done.stderr


def test_verify_loads_the_tls_listener_when_plain_http_redirects(
    tls_serve: TlsServe, tmp_path: Path
) -> None:
    report, stderr = verify(tls_serve, tmp_path / "verify")
    assert report["url"] == f"https://127.0.0.1:{tls_serve.secure}/", report["url"]
    total = report["total"]
    assert total > 20, report
    assert report["failed"] == 0, report
    # Every request reached the app (v1) and was answered 200: none was a 308.
    assert report["statuses"] == {"200": total}, report["statuses"]
    assert set(report["versions"]) == {"v1"}
    said = [line for line in stderr.splitlines() if NOT_CHECKED in line]
    assert len(said) == 1, stderr
    assert f"https://127.0.0.1:{tls_serve.secure}/" in said[0]


def test_verify_sessions_follow_the_load_to_the_tls_listener(
    tls_serve: TlsServe, tmp_path: Path
) -> None:
    report, _ = verify(tls_serve, tmp_path / "verify", "--sessions", "3")
    sessions = report["sessions"]
    assert (sessions["users"], sessions["kept"], sessions["lost"]) == (3, 3, 0), sessions
    assert sessions["errors"] == 0, sessions
    assert report["statuses"] == {"200": report["total"]}, report["statuses"]


def test_url_still_overrides_the_target_and_308s_are_not_failures(
    tls_serve: TlsServe, tmp_path: Path
) -> None:
    """What verify measured before it followed the TLS edge: --url at the plain
    listener gets nothing but 308s, none of them a failure, no version seen."""
    plain = f"http://127.0.0.1:{tls_serve.plain}/"
    report, stderr = verify(tls_serve, tmp_path / "verify", "--url", plain)
    assert report["url"] == plain
    assert report["failed"] == 0
    assert report["statuses"] == {"308": report["total"]}, report["statuses"]
    assert set(report["versions"]) == {"-"}
    assert NOT_CHECKED not in stderr


def test_a_url_over_https_has_its_certificate_checked(tls_serve: TlsServe, tmp_path: Path) -> None:
    """--url is the user's own target: its certificate is checked, as before.
    This one names example.test, from a CA this host does not trust."""
    secure = f"https://127.0.0.1:{tls_serve.secure}/"
    report, stderr = verify(tls_serve, tmp_path / "verify", "--url", secure, exits=1)
    failed = {kind: n for kind, n in report["failures"].items() if n}
    assert report["total"] > 0
    assert failed == {"connect": report["total"]}, report["failures"]
    assert NOT_CHECKED not in stderr


def test_a_checked_load_sends_its_host_header_as_the_tls_server_name(
    tls_serve: TlsServe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 127.0.0.1 with Host example.test, the name checked (and sent as SNI)
    is example.test, as a browser would: the certificate passes."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_serve.ca))  # read when the context is made
    spec = LoadSpec(
        f"https://127.0.0.1:{tls_serve.secure}/",
        headers={"Host": "example.test"},
        concurrency=2,
        duration=0.3,
    )
    result = run(run_load(spec))
    assert result.samples
    assert {(s.status, s.version) for s in result.samples} == {(200, "v1")}
