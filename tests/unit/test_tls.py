"""TLS certificate checks (a clear error naming the key), SNI choice, and the
`[proxy.tls]` keys."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import socket
from pathlib import Path

import pytest
import trustme

from certs import write_cert
from zerodown.config.load import parse_config
from zerodown.errors import ConfigError
from zerodown.proxy.redirect import location
from zerodown.proxy.settings import ProxySettings, TlsSettings
from zerodown.proxy.tls import check_all, expiring, pick, tls_fds

NOW = datetime.datetime.now(datetime.UTC)


def settings(*pairs: tuple[str, str]) -> TlsSettings:
    return TlsSettings(listen=("127.0.0.1:443",), certs=pairs)


def test_a_good_pair_gives_its_names_and_expiry(tmp_path: Path) -> None:
    files = write_cert(trustme.CA(), tmp_path, "site", "example.test", "*.example.test")
    (found,) = check_all(settings((files.cert, files.key)))
    assert found.names == ("example.test", "*.example.test")
    assert found.not_after > NOW


def test_an_unreadable_key_names_proxy_tls_key(tmp_path: Path) -> None:
    files = write_cert(trustme.CA(), tmp_path, "site")
    with pytest.raises(ConfigError) as raised:
        check_all(settings((files.cert, str(tmp_path / "missing.key"))))
    assert raised.value.key == "proxy.tls.key"
    assert raised.value.reason.startswith("cannot read")
    assert "no such file" in raised.value.reason


def test_a_key_of_another_certificate_is_refused_naming_the_pair(tmp_path: Path) -> None:
    ca = trustme.CA()
    one, two = write_cert(ca, tmp_path, "one"), write_cert(ca, tmp_path, "two")
    with pytest.raises(ConfigError) as raised:
        check_all(settings((one.cert, one.key), (two.cert, one.key)))
    assert raised.value.key == "proxy.tls.certs[0].key"
    assert "does not match the certificate" in raised.value.reason


def test_an_expired_certificate_is_refused_with_its_date(tmp_path: Path) -> None:
    expired = NOW - datetime.timedelta(days=1)
    files = write_cert(trustme.CA(), tmp_path, "old", "example.test", not_after=expired)
    with pytest.raises(ConfigError) as raised:
        check_all(settings((files.cert, files.key)))
    assert raised.value.key == "proxy.tls.cert"
    assert f"expired on {expired:%Y-%m-%d}" in raised.value.reason


def test_a_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    files = write_cert(trustme.CA(), tmp_path, "site")
    with pytest.raises(ConfigError) as raised:
        check_all(settings((files.key, files.key)))
    assert (raised.value.key, "no PEM certificate" in raised.value.reason) == (
        "proxy.tls.cert",
        True,
    )


def test_sni_picks_exact_then_wildcard_then_the_first() -> None:
    names = [("example.test",), ("api.test", "*.apps.test"), ("x.apps.test",)]
    assert pick(names, "API.test.") == 1
    assert pick(names, "x.apps.test") == 2  # exact beats an earlier wildcard
    assert pick(names, "y.apps.test") == 1
    assert pick(names, "a.b.apps.test") == 0  # a wildcard is one label deep
    assert pick(names, None) == 0


def test_redirect_location_keeps_path_and_drops_port_443() -> None:
    assert location("example.test", b"/a?b=1", 443) == b"https://example.test/a?b=1"
    assert location("[::1]", b"/", 8443) == b"https://[::1]:8443/"
    with pytest.raises(ConfigError.__mro__[1]):  # BadRequest is a ZerodownError
        location("evil test", b"/", 443)


def test_proxy_tls_keys_reach_the_settings_and_survive_json() -> None:
    config = parse_config(
        """
        [proxy]
        listen = ["127.0.0.1:8080"]
        [proxy.tls]
        listen = ["0.0.0.0:443"]
        cert = "site.pem"
        key = "site.key"
        redirect_http = true
        [[proxy.tls.certs]]
        cert = "api.pem"
        key = "api.key"
        """
    )
    assert config.proxy.listeners() == ["127.0.0.1:8080", "0.0.0.0:443"]
    tls = config.proxy_settings().tls
    assert tls == TlsSettings(
        listen=("0.0.0.0:443",),
        certs=(("site.pem", "site.key"), ("api.pem", "api.key")),
        redirect_http=True,
    )
    document = json.loads(json.dumps(dataclasses.asdict(config.proxy_settings())))
    assert ProxySettings.from_document(document) == config.proxy_settings()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[proxy.tls]\nlisten = ["0.0.0.0:443"]\nkey = "k"', "proxy.tls.cert"),
        ('[proxy.tls]\nlisten = []\ncert = "c"\nkey = "k"', "proxy.tls.listen"),
        (
            '[proxy.tls]\nlisten = ["0.0.0.0:443"]\ncert = "c"\nkey = "k"\nredirect = true',
            "proxy.tls.redirect",
        ),
    ],
)
def test_bad_proxy_tls_keys_are_named(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(toml)
    assert key in str(raised.value)


def test_a_tls_listener_may_not_also_be_plain() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            '[proxy]\nlisten = ["127.0.0.1:8443"]\n'
            '[proxy.tls]\nlisten = ["127.0.0.1:8443"]\ncert = "c"\nkey = "k"'
        )
    assert "proxy.tls.listen[0]: 127.0.0.1:8443 is also in proxy.listen" in str(raised.value)


def test_tls_listeners_are_the_last_addresses_when_their_ports_agree() -> None:
    with contextlib.ExitStack() as stack:
        plain, secure, extra = (
            stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(3)
        )
        wanted = TlsSettings(listen=(f"127.0.0.1:{secure.getsockname()[1]}",), certs=())
        assert tls_fds([plain, secure], wanted) == {secure.fileno()}
        anywhere = TlsSettings(listen=("127.0.0.1:0",), certs=())
        assert tls_fds([plain, secure, secure], anywhere) == {secure.fileno()}
        # Handed over by a generation without TLS: the last socket is a plain one.
        assert tls_fds([plain, extra], wanted) == set()


def test_a_certificate_close_to_its_end_is_warned_of(tmp_path: Path) -> None:
    soon = NOW + datetime.timedelta(days=3, hours=1)
    files = write_cert(trustme.CA(), tmp_path, "soon", "example.test", not_after=soon)
    found = check_all(settings((files.cert, files.key)), NOW)
    assert expiring(found, NOW) == [f"{files.cert} expires on {soon:%Y-%m-%d %H:%M} UTC, in 3 days"]
    assert expiring(found, NOW - datetime.timedelta(days=30)) == []
