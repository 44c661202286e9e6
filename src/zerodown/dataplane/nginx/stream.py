"""tcp services -> nginx's `stream {}` block. Pure but for one file lookup.

Each tcp service gets an `upstream` (the same weights as an HTTP service's,
render.server_weights, so the canary weight is a share of connections) and
a `server { listen …; proxy_pass …; }`. A failed connect goes on to the
next server (`proxy_next_upstream`, on by default in stream); once
connected, never. Health is zerodown's own connect check, as for HTTP:
a target it finds down is rendered `down`. A drain is a reload: the old
workers keep their open connections until these close, or until
`worker_shutdown_timeout` (never shorter than a drain) cuts them.

Each connection is logged at its end to a buffered file of its own
(streamlog.py), which the driver counts per target as it counts HTTP
requests: the canary judge works on tcp services through nginx too.

Debian builds the stream module as a dynamic one (libnginx-mod-stream):
`load_module` it when it is installed there; an nginx with stream built in
needs no line, and one without it fails `nginx -t` naming `stream`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from zerodown.dataplane.nginx.streamlog import SERVICE_VARIABLE, log_lines
from zerodown.proxy.settings import CONNECT_TIMEOUT
from zerodown.routing import ServiceSpec, parse_address

__all__ = ["STREAM_MODULE", "load_stream", "stream_block"]

STREAM_MODULE: Final = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
CONNECT_TRIES: Final = 3  # as the embedded proxy's (proxy/tcp.py)
IDLE_TIMEOUT: Final = "1h"
_BALANCE: Final = {
    "round_robin": "",
    "least_conn": "least_conn;",
    "ip_hash": "hash $remote_addr consistent;",  # stream has no ip_hash
    "random_two": "random two least_conn;",
}


def load_stream(services: Sequence[ServiceSpec], module: Path = STREAM_MODULE) -> list[str]:
    """The `load_module` line for the main context, if a tcp service needs it."""
    if any(s.mode == "tcp" for s in services) and module.exists():
        return [f"load_module {module};"]
    return []


def stream_block(
    services: Sequence[ServiceSpec],
    weights: dict[str, list[tuple[str, int | None]]],
    connect_timeout: float = CONNECT_TIMEOUT,
    log: tuple[Path, str] | None = None,
) -> list[str]:
    """`stream { … }` for the tcp services (none: no block). `weights`:
    service -> (address, weight or None for `down`), from render.server_weights;
    `log`: the stream log's file and key (streamlog.py), or no log."""
    tcp = [s for s in services if s.mode == "tcp"]
    if not tcp:
        return []
    body: list[str] = log_lines(*log) if log is not None else []
    for service in tcp:
        body += _service(service, weights[service.name], connect_timeout)
    return ["stream {", *_indent(body), "}"]


def _service(
    service: ServiceSpec, servers: list[tuple[str, int | None]], connect_timeout: float
) -> list[str]:
    assert service.listen is not None
    name = f"zd_tcp_{service.name}"
    listen = f"listen {_address(service.listen)};"
    access = [f"set {SERVICE_VARIABLE} {service.name};", *_access(service)]
    if not any(weight for _, weight in servers):
        # No target takes a connection: accept and close it at once.
        return ["server {", *_indent([listen, *access, 'return "";']), "}"]
    passive = service.passive
    fails = f"max_fails={passive.consecutive_errors}" if passive else "max_fails=0"
    timeout = f" fail_timeout={math.ceil(passive.base_ejection_time)}s" if passive else ""
    lines = [_BALANCE[service.balance]] if _BALANCE[service.balance] else []
    for address, weight in servers:
        state = f"weight={weight} {fails}{timeout}" if weight else "down"
        lines.append(f"server {_address(address)} {state};")
    server = [
        listen,
        *access,
        f"proxy_pass {name};",
        f"proxy_connect_timeout {max(1, round(connect_timeout * 1000))}ms;",
        f"proxy_next_upstream_tries {CONNECT_TRIES};",
        # A client's FIN is passed on and the answer still comes back (1.21.4+);
        # off, nginx would close both directions at the first FIN.
        "proxy_half_close on;",
        # Idle both ways this long: cut (nginx's default is 10 min; HAProxy's
        # `timeout tunnel` is this hour, so both data planes agree).
        f"proxy_timeout {IDLE_TIMEOUT};",
    ]
    return [
        f"upstream {name} {{",
        *_indent(lines),
        "}",
        "server {",
        *_indent(server),
        "}",
    ]


def _access(service: ServiceSpec) -> list[str]:
    """allow/deny by the peer address (ngx_stream_access_module: the first
    rule that matches decides, so every deny comes first: deny wins)."""
    guard = service.guard
    if guard is None:
        return []
    lines = [f"deny {cidr};" for cidr in guard.deny]
    lines += [f"allow {cidr};" for cidr in guard.allow]
    return lines + (["deny all;"] if guard.allow else [])


def _address(address: str) -> str:
    host, port = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _indent(lines: Iterable[str]) -> list[str]:
    return ["    " + line for line in lines]
