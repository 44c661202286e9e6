"""`[proxy.tls]` rendered into haproxy.cfg and nginx.conf: pure."""

from __future__ import annotations

from pathlib import Path

from zerodown.dataplane.haproxy.render import render as render_haproxy
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.nginx.tls import NginxTls
from zerodown.proxy.settings import TlsSettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

TLS = TlsSettings(
    listen=("0.0.0.0:8443",),
    certs=(("/c/site.pem", "/c/site.key"), ("/c/api.pem", "/c/api.key")),
    redirect_http=True,
)
LISTEN = ["0.0.0.0:8080", "0.0.0.0:8443"]
TABLE = RoutingTable(
    services=(
        ServiceSpec(name="web", stable=PoolSpec(targets=(TargetSpec(address="10.0.0.1:9000"),))),
    )
)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_haproxy_binds_tls_with_h2_and_redirects_plain_http() -> None:
    text = lines(render_haproxy(TABLE, LISTEN, HaproxySettings(state_dir=Path("/zd"), tls=TLS)))
    assert "bind 0.0.0.0:8080" in text
    assert (
        "bind 0.0.0.0:8443 ssl crt /zd/tls/0.pem crt /zd/tls/1.pem "
        "alpn h2,http/1.1 ssl-min-ver TLSv1.2"
    ) in text
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in text
    redirect = (
        "http-request redirect location https://%[var(txn.host)]:8443%[capture.req.uri] code 308"
    )
    assert text.count(redirect) == 1  # on the plain frontend only
    assert text.count("http-request add-header X-Forwarded-Proto https") == 1
    assert text.count("http-request add-header X-Forwarded-Proto http") == 1


def test_haproxy_without_tls_renders_no_tls() -> None:
    text = render_haproxy(TABLE, LISTEN[:1], HaproxySettings(state_dir=Path("/zd")))
    # X-Forwarded-Ssl is a client-identity header the frontend deletes: not TLS.
    kept = "\n".join(line for line in text.splitlines() if "del-header" not in line)
    assert "ssl" not in kept
    assert "redirect" not in text


def test_nginx_serves_tls_with_http2_a_block_per_sni_name_and_a_redirect_block() -> None:
    tls = NginxTls(TLS, (("site.test",), ("api.test",)))
    text = render_nginx(TABLE.services, LISTEN, NginxSettings(state_dir=Path("/zd"), tls=tls), 1)
    named = [
        (block.split("server_name ", 1)[1].split(";", 1)[0], lines(block))
        for block in text.split("server {")[1:]
        if "server_name" in block
    ]
    blocks = dict(named)
    assert blocks["api.test"][:4] == [
        "listen 0.0.0.0:8443 ssl http2;",
        "server_name api.test;",
        "ssl_certificate /c/api.pem;",
        "ssl_certificate_key /c/api.key;",
    ]
    assert "proxy_pass http://zd_web;" in blocks["api.test"]  # routed as host api.test would be
    catch_all = [b for name, b in named if name == "_"]
    assert [b[0] for b in catch_all] == [
        "listen 0.0.0.0:8443 ssl http2 default_server;",
        "listen 0.0.0.0:8080 default_server;",
    ]
    assert "ssl_certificate /c/site.pem;" in catch_all[0]
    assert "return 308 https://$host:8443$request_uri;" in catch_all[1]
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in lines(text)
