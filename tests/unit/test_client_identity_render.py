"""What HAProxy and nginx are told to drop of a client's claims about itself
(dataplane/haproxy/identity.py, nginx/render._client_identity), checked with
Python's re, whose syntax for these regexes is PCRE's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zerodown.dataplane.haproxy.identity import (
    identity_rules,
    spoofed_spellings,
    untrusted_identity,
)
from zerodown.dataplane.haproxy.render import render as render_haproxy
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

TABLE = RoutingTable(
    services=(
        ServiceSpec(name="web", stable=PoolSpec(targets=(TargetSpec(address="127.0.0.1:9001"),))),
    )
)


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("X-Real-IP", True),
        ("forwarded", True),
        ("True-Client-IP", True),
        ("X-Forwarded-Port", True),
        # Set by the proxy itself, by rules of their own (a trusted one's kept).
        ("X-Forwarded-For", False),
        ("X-Request-ID", False),
        ("Forwarded-Extra", False),
        ("X-Real-IP-Note", False),
    ],
)
def test_the_untrusted_regex_names_the_identity_fields_whole(name: str, dropped: bool) -> None:
    assert bool(re.match(untrusted_identity(), name)) is dropped


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("X_Forwarded_For", True),
        ("x-forwarded_proto", True),
        ("X_REAL_IP", True),
        ("content_length", True),
        ("Transfer_Encoding", True),
        # The dashed spelling is the real field; other underscores are the app's.
        ("X-Forwarded-For", False),
        ("Content-Length", False),
        ("x_my_header", False),
        ("x_forwarded_for_me", False),
    ],
)
def test_the_spellings_regex_takes_an_underscore_for_a_dash(name: str, dropped: bool) -> None:
    assert bool(re.match(spoofed_spellings(), name)) is dropped


def test_without_trusted_proxies_one_rule_drops_both_sets() -> None:
    (rule,) = identity_rules(trusted=False)
    regex = rule.removeprefix("http-request del-header ").removesuffix(" -m reg")
    assert [bool(re.match(regex, n)) for n in ("X-Real-IP", "X_Forwarded_For", "Host")] == [
        True,
        True,
        False,
    ]


def test_haproxy_drops_them_before_it_sets_its_own() -> None:
    for trusted in ((), ("10.0.0.0/8",)):
        settings = HaproxySettings(state_dir=Path("/zd"), trusted_proxies=trusted)
        lines = [
            line.strip() for line in render_haproxy(TABLE, ["127.0.0.1:80"], settings).splitlines()
        ]
        dropping = [i for i, line in enumerate(lines) if " -m reg" in line and "del-header" in line]
        setting = lines.index(next(line for line in lines if "X-Forwarded-Proto" in line))
        assert len(dropping) == (2 if trusted else 1)
        assert max(dropping) < setting
        if trusted:
            assert lines[dropping[1]].endswith("-m reg unless trusted")
            assert lines.index("acl trusted src 10.0.0.0/8") < dropping[0]


def test_nginx_sends_them_empty_or_a_trusted_proxys_own() -> None:
    plain = render_nginx(TABLE.services, ["127.0.0.1:80"], NginxSettings(state_dir=Path("/zd")), 1)
    assert 'proxy_set_header x-real-ip "";' in plain
    assert 'proxy_set_header forwarded "";' in plain
    trusting = NginxSettings(state_dir=Path("/zd"), trusted_proxies=("10.0.0.0/8",))
    text = render_nginx(TABLE.services, ["127.0.0.1:80"], trusting, 1)
    assert "map $zd_trusted $zd_keep_x_real_ip { 1 $http_x_real_ip; default ''; }" in text
    assert "proxy_set_header x-real-ip $zd_keep_x_real_ip;" in text
    assert "underscores_in_headers" not in text  # nginx's default (off) drops X_Real_IP
