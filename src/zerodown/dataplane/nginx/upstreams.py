"""Reload-free upstreams on nginx: pure text for zerodown_upstreams.lua.

Every nginx reload makes each old worker close its idle keep-alive client
connections at once (`ngx_close_idle_connections`, whatever the config),
and a request a client sends on one of them at that moment is lost: 208-271
requests of ~500,000 per deploy with wrk at ~40,000 req/s (a client that
retries, as RFC 9112 §9.3.1 lets it, never sees them). With `upstreams =
"lua"` each HTTP service's upstream is a `balancer_by_lua` that picks the
target from a table in a shared dict (zerodown_upstreams.lua), and a change
of targets, weights, drains or health verdicts is a new table POSTed to the
control socket: the configuration text is the same, so nothing reloads.

What still changes the text and so still reloads: a service or route
added or changed, a service going to or from "no target takes traffic"
(its location answers 503 itself), recreate's hold, sticky services' per
target upstreams, targets named by host name (nginx resolves them), tcp
services (stream upstreams; a stream reload closes nothing idle), TLS
files, and for a cached service a change of the releases taking traffic
(its cache key names them: cachespec.generation_tag) and, under
request_stats = "canary", its canary starting or ending (nginx answers
its cache hits without the balancer, so the text says what it logs).

This module renders the table, the http-level and per-service lines, and
reads the workers' reports back; the driver does the I/O.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from zerodown.routing import ServiceSpec, parse_address

__all__ = [
    "LUA_MODULES",
    "LUA_PACKAGES",
    "Reports",
    "UpstreamMode",
    "control_locations",
    "counts_busy",
    "http_lines",
    "is_ip",
    "lua_missing",
    "main_lines",
    "parse_reports",
    "table_text",
    "upstream_block",
]

UpstreamMode = Literal["lua", "reload"]

HEADER: Final = "zerodown-upstreams 1"  # zerodown_upstreams.lua checks it
MODULE: Final = "zerodown_upstreams"  # the Lua module, and the global init_by_lua binds it to
DICT: Final = "zerodown_upstreams"
DICT_SIZE: Final = "4m"  # the table (~60 bytes a target) and one report per worker
LOAD_PATH: Final = "/zerodown/upstreams/load"
REPORTS_PATH: Final = "/zerodown/upstreams/workers"
# Debian's dynamic modules: the Lua module links against the devel kit.
LUA_MODULES: Final = (
    Path("/usr/lib/nginx/modules/ndk_http_module.so"),
    Path("/usr/lib/nginx/modules/ngx_http_lua_module.so"),
)
RESTY_CORE: Final = Path("/usr/share/lua/5.1/resty/core.lua")  # the module needs it loaded
LUA_PACKAGES: Final = "libnginx-mod-http-lua lua-resty-core"
SOURCE: Final = Path(__file__).with_name(f"{MODULE}.lua")
_BALANCE: Final = {
    "round_robin": "round_robin",
    "least_conn": "least_conn",
    "least_time": "least_conn",  # NGINX Plus only; least_conn is its nearest
    "random_two": "random_two",
    "ip_hash": "hash",
    "hash": "hash",
}
_HASH_KEYS: Final = {"path": "uri", "ip": "remote_addr"}
# The balancers that weigh requests in flight, which the Lua counts only with
# a log_by_lua hook at each request's end (3,800 instructions a request).
_COUNTS_BUSY: Final = frozenset({"least_conn", "least_time", "random_two"})
# How long a worker keeps an idle connection to a target: a drain ends when
# no connection to the target is open (sockets.py), so at most this long
# after its last answer. nginx's default is 60s; under load no connection
# idles this long, and below it a reconnect costs a loopback handshake.
IDLE_TIMEOUT: Final = "1s"


def lua_missing(needed: Sequence[Path] | None = None) -> list[Path]:
    """The files `upstreams = "lua"` needs that are not installed."""
    paths = (*LUA_MODULES, RESTY_CORE) if needed is None else needed
    return [path for path in paths if not path.exists()]


def main_lines(modules: Sequence[Path] = LUA_MODULES) -> list[str]:
    return [f"load_module {module};" for module in modules]


def http_lines(lua_dir: Path, table: Path, generation: int) -> list[str]:
    """The shared dict, and the table loaded whenever nginx reads its config:
    by the master (as root, it may read the driver's owner-only file).
    $zd_count (guard.py's geo): set by the balancer for a service the table
    says is counted, and by each refusal; it decides the access log line."""
    return [
        # The module's own version in the text: a changed module is a reload,
        # even for an nginx adopted from a driver that ran the old one.
        f"# {SOURCE.name} {_source_digest()}",
        f'lua_package_path "{lua_dir}/?.lua;;";',
        f"lua_shared_dict {DICT} {DICT_SIZE};",
        f"init_by_lua_block {{ {MODULE} = require('{MODULE}'); assert({MODULE}.load('{table}')) }}",
        # A worker routes only by tables for its own configuration (the Lua's adopt).
        f"init_worker_by_lua_block {{ {MODULE}.init_worker({generation}) }}",
    ]


def upstream_block(name: str, service: str, keepalive: int, keepalive_requests: int) -> str:
    """The upstream of one service: its one `server` line is a placeholder
    nginx requires; every try's target comes from the balancer."""
    lines = [
        "server 0.0.0.1;  # placeholder: zerodown_upstreams.lua picks each target",
        f"balancer_by_lua_block {{ {MODULE}.balance('{service}') }}",
        # After the balancer: the pool keeps connections to whatever it picked.
        f"keepalive {keepalive};",
        f"keepalive_requests {keepalive_requests};",
        f"keepalive_timeout {IDLE_TIMEOUT};",
    ]
    body = "\n".join(f"    {line}" for line in lines)
    return f"upstream {name} {{\n{body}\n}}"


COUNTED_LOG: Final = "if=$zd_count"  # the access_log condition of a Lua service (render.py)
LOG_LINE: Final = f"log_by_lua_block {{ {MODULE}.done() }}"


def is_ip(address: str) -> bool:
    """host:port with an IP address for host, and no IPv6 zone (fe80::1%eth0),
    which the balancer cannot take."""
    try:
        ip = ipaddress.ip_address(parse_address(address)[0])
    except ValueError:
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id)


@functools.cache
def _source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def counts_busy(service: ServiceSpec) -> bool:
    """Whether the service's balancer needs LOG_LINE in its location."""
    return service.balance in _COUNTS_BUSY


def control_locations() -> list[str]:
    """On the control socket: load a table (the POST body), read the reports."""
    return [
        f"location = {LOAD_PATH} {{",
        "    client_max_body_size 4m;",
        "    client_body_buffer_size 4m;  # in memory: the worker reads no file",
        f"    content_by_lua_block {{ {MODULE}.serve_load() }}",
        "}",
        f"location = {REPORTS_PATH} {{ content_by_lua_block {{ {MODULE}.serve_workers() }} }}",
    ]


def table_text(
    services: Sequence[ServiceSpec],
    weights: dict[str, list[tuple[str, int]]],
    generation: int,
    counted: frozenset[str] = frozenset(),
) -> str:
    """The table: per HTTP service its balancer, passive limits, hash key and
    whether its requests are logged to zerodown now (`counted`: request_stats
    "canary" while it has a canary, so that starting one reloads nothing),
    then each target that takes new requests with its weight (`weights`:
    render.server_weights, the split and health already in them), for the
    configuration of `generation`."""
    lines = [HEADER, f"generation {generation}"]
    for service in sorted(services, key=lambda s: s.name):
        passive = service.passive
        fails = passive.consecutive_errors if passive else 0
        timeout = passive.base_ejection_time if passive else 0.0
        key, count = _hash_key(service), int(service.name in counted)
        lines.append(
            f"service {service.name} {_BALANCE[service.balance]} {fails} {timeout:g} {key} {count}"
        )
        for address, weight in weights.get(service.name, []):
            lines.append(f"peer {service.name} {_peer(address)} {weight}")
    return "\n".join(lines) + "\n"


def _hash_key(service: ServiceSpec) -> str:
    """The nginx variable (no "$") a hash balancer hashes, "-" for none."""
    if service.balance == "ip_hash":
        return "remote_addr"
    if service.balance != "hash":
        return "-"
    kind, _, name = service.hash_key.partition(":")
    if kind in _HASH_KEYS:
        return _HASH_KEYS[kind]
    prefix = "http" if kind == "header" else kind
    return f"{prefix}_{name.lower().replace('-', '_')}"


def _peer(address: str) -> str:
    """ "host port", the host as nginx writes it in $upstream_addr (IPv6
    compressed, in brackets), which the balancer matches tries against."""
    host, port = parse_address(address)
    ip = ipaddress.ip_address(host)
    return f"[{ip.compressed}] {port}" if ip.version == 6 else f"{ip} {port}"


@dataclass(frozen=True, slots=True)
class Reports:
    """What the workers say: the table's version, and the version each
    worker (by pid) routes by (a dead one's lingers REPORT_TTL)."""

    version: int
    workers: dict[int, int]

    def caught_up(self, pids: set[int], version: int) -> bool:
        """Every worker in `pids` routes by `version` or later."""
        return all(self.workers.get(pid, -1) >= version for pid in pids)


def parse_reports(body: bytes) -> Reports:
    """`version N`, then `PID VERSION` per worker; junk lines are skipped."""
    version, workers = 0, {}
    for line in body.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "version" and words[1].isdigit():
            version = int(words[1])
        elif len(words) == 2 and words[0].isdigit() and words[1].lstrip("-").isdigit():
            workers[int(words[0])] = int(words[1])
    return Reports(version, workers)
