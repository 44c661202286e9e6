"""`[proxy.tls]` on nginx: TLS listeners (`ssl http2`), the protocol and
cipher defaults, the certificate of each server block, and the 308 from
plain HTTP.

nginx picks a server block by the SNI name, then offers that block's
certificate. The route blocks are per route host, so each gets the
certificate the embedded proxy would pick for its name (proxy/tls.py
`pick`), and each name of an extra certificate that no route names gets a
block of its own, routed as the embedded router would route that host: a
client asking for it is offered its certificate, not the default one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zerodown.proxy.settings import TlsSettings
from zerodown.proxy.tls import INTERMEDIATE_CIPHERS, TLS13_CIPHERSUITES, pick
from zerodown.routing import parse_address


@dataclass(frozen=True, slots=True)
class NginxTls:
    """What the renderer needs: the settings, and the DNS names of each
    certificate (read from the files by the config layer: render stays pure)."""

    settings: TlsSettings
    names: tuple[tuple[str, ...], ...]  # per certificate, as TlsSettings.certs


def http_lines(tls: NginxTls | None) -> list[str]:
    if tls is None:
        return []
    return [
        "ssl_protocols TLSv1.2 TLSv1.3;",
        f"ssl_ciphers {INTERMEDIATE_CIPHERS};",
        f"ssl_conf_command Ciphersuites {TLS13_CIPHERSUITES};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:zd_tls:10m;",
        # No tickets: as the embedded proxy, so a reloaded key is not outlived.
        "ssl_session_tickets off;",
    ]


def sni_hosts(tls: NginxTls | None) -> list[str]:
    """Names of the extra certificates (not the default one): each needs a block."""
    if tls is None:
        return []
    return [name for names in tls.names[1:] for name in names]


def route_listen(listen: Sequence[str], tls: NginxTls | None) -> list[str]:
    """The listeners of the route blocks: all, or the TLS ones when plain HTTP redirects."""
    if tls is None or not tls.settings.redirect_http:
        return list(listen)
    return [address for address in listen if address in tls.settings.listen]


def listen_line(address: str, *, default: bool, tls: NginxTls | None) -> str:
    host, port = parse_address(address)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    secure = " ssl http2" if tls is not None and address in tls.settings.listen else ""
    return f"listen {where}{secure}{' default_server' if default else ''};"


def certificate_lines(host: str, tls: NginxTls | None) -> list[str]:
    """The certificate of the block for `host` ("*": the default one)."""
    if tls is None:
        return []
    index = 0 if host == "*" else pick(tls.names, host)
    cert, key = tls.settings.certs[index]
    return [f"ssl_certificate {cert};", f"ssl_certificate_key {key};"]


def redirect_block(listen: Sequence[str], tls: NginxTls | None) -> list[str]:
    """The block of the plain listeners when they redirect: 308, same host and
    path, to the first TLS listener's port (`:443` left out)."""
    if tls is None or not tls.settings.redirect_http:
        return []
    plain = [a for a in listen if a not in tls.settings.listen]
    if not plain:
        return []
    port = tls.settings.listen[0].rpartition(":")[2]
    shown = "" if port == "443" else f":{port}"
    lines = [listen_line(a, default=True, tls=tls) for a in plain]
    lines += ["server_name _;", f"return 308 https://$host{shown}$request_uri;"]
    body = "\n".join(f"    {line}" for line in lines)
    return [f"server {{\n{body}\n}}"]
