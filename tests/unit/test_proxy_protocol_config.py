"""`[proxy] proxy_protocol`: the key at load, and what HAProxy and nginx get."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from zerodown.config import parse_config
from zerodown.config.support import PROXY_FEATURES, proxy_not_carried
from zerodown.control.dataplanes import haproxy_settings, nginx_settings
from zerodown.dataplane.haproxy.render import render as render_haproxy
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.nginx.tls import NginxTls
from zerodown.errors import ConfigError
from zerodown.proxy.settings import ProxySettings, TlsSettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

TLS = TlsSettings(listen=("0.0.0.0:8443",), certs=(("/c/site.pem", "/c/site.key"),))
LISTEN = ["0.0.0.0:8080", "0.0.0.0:8443"]
TABLE = RoutingTable(
    services=(
        ServiceSpec(name="web", stable=PoolSpec(targets=(TargetSpec(address="10.0.0.1:9000"),))),
    )
)
TRUSTED = ("10.0.0.0/24", "192.0.2.7/32")


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_the_key_needs_trusted_proxies_and_names_itself() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[proxy]\nproxy_protocol = true\n")
    assert caught.value.key == "proxy.proxy_protocol"
    assert "needs trusted_proxies" in str(caught.value)


def test_the_key_reaches_every_data_plane(tmp_path: Path) -> None:
    config = parse_config('[proxy]\nproxy_protocol = true\ntrusted_proxies = ["10.0.0.0/24"]\n')
    assert config.proxy_settings().proxy_protocol is True
    assert haproxy_settings(config, tmp_path).proxy_protocol is True
    assert nginx_settings(config, tmp_path).proxy_protocol is True
    assert parse_config("").proxy_settings().proxy_protocol is False
    # Workers and a hot restart's successor get the settings as JSON.
    settings = config.proxy_settings()
    as_json = json.loads(json.dumps(dataclasses.asdict(settings)))
    assert ProxySettings.from_document(as_json) == settings


def test_haproxy_expects_a_header_from_trusted_peers_on_every_frontend() -> None:
    settings = HaproxySettings(
        state_dir=Path("/zd"), tls=TLS, trusted_proxies=TRUSTED, proxy_protocol=True
    )
    text = lines(render_haproxy(TABLE, LISTEN, settings))
    expect = "tcp-request connection expect-proxy layer4 if { src 10.0.0.0/24 192.0.2.7/32 }"
    assert text.count(expect) == 2  # the plain frontend and the TLS one
    assert text[text.index(expect) - 1] == "bind 0.0.0.0:8080"  # before any http-request rule
    off = HaproxySettings(state_dir=Path("/zd"), trusted_proxies=TRUSTED)
    assert "expect-proxy" not in render_haproxy(TABLE, LISTEN, off)


def test_nginx_listeners_demand_the_header_and_realip_reads_it() -> None:
    tls = NginxTls(TLS, (("site.test",),))
    settings = NginxSettings(
        state_dir=Path("/zd"), tls=tls, trusted_proxies=TRUSTED, proxy_protocol=True
    )
    text = lines(render_nginx(TABLE.services, LISTEN, settings, 1))
    listens = [line for line in text if line.startswith("listen ")]
    assert "listen 0.0.0.0:8443 ssl http2 proxy_protocol default_server;" in listens
    assert "listen 0.0.0.0:8080 proxy_protocol default_server;" in listens
    assert [line for line in listens if "proxy_protocol" not in line] == [
        "listen unix:/zd/control.sock;"
    ]
    servers = text.count("server_name _;")
    assert text.count("if ($zd_pp_peer = 0) { return 444; }") == servers
    assert "real_ip_header proxy_protocol;" in text
    assert "real_ip_header X-Forwarded-For;" not in text
    assert "set_real_ip_from 192.0.2.7/32;" in text
    assert "geo $realip_remote_addr $zd_pp_peer { default 0; 10.0.0.0/24 1; 192.0.2.7/32 1; }" in (
        text
    )
    # Trust and X-Forwarded-For go by the header's client, as if it came itself.
    assert "geo $remote_addr $zd_trusted { default 0; 10.0.0.0/24 1; 192.0.2.7/32 1; }" in text
    assert "map $zd_trusted $zd_forwarded_for { 1 $zd_forwarded_chain; default $remote_addr; }" in (
        text
    )


def test_nginx_without_the_key_renders_as_before() -> None:
    settings = NginxSettings(state_dir=Path("/zd"), trusted_proxies=TRUSTED)
    text = render_nginx(TABLE.services, LISTEN[:1], settings, 1)
    assert "proxy_protocol" not in text
    assert "zd_pp_peer" not in text
    assert "geo $realip_remote_addr $zd_trusted" in text


@pytest.mark.parametrize("dataplane", ["embedded", "haproxy", "nginx"])
def test_every_data_plane_carries_the_key(dataplane: str) -> None:
    (feature,) = [f for f in PROXY_FEATURES if f.key == "proxy_protocol"]
    assert dataplane in feature.carried_by
    config = parse_config(
        f'[proxy]\ndataplane = "{dataplane}"\nproxy_protocol = true\n'
        'trusted_proxies = ["10.0.0.0/24"]\n'
    )
    assert proxy_not_carried(config.proxy) == []
