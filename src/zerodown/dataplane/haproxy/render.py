"""RoutingTable + settings -> haproxy.cfg text. Pure: no files, no processes.

The config holds the whole table in force, servers included, although after
start every server change goes through the runtime API: HAProxy forgets
servers added at runtime on a reload (management.txt, "add server"), so the
file must always say what runs. A reload also reloads the servers' admin and
health states from `server-state-file`, saved just before it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from zerodown.dataplane.accesslog import LogTarget
from zerodown.dataplane.haproxy.cache import cache_backend, cache_sections
from zerodown.dataplane.haproxy.counted import silence_rule
from zerodown.dataplane.haproxy.guard import guard_lines
from zerodown.dataplane.haproxy.hold import hold_rules
from zerodown.dataplane.haproxy.identity import identity_rules
from zerodown.dataplane.haproxy.latency import LOG_FORMAT as LATENCY_LOG_FORMAT
from zerodown.dataplane.haproxy.servers import Server, backend_name, servers
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.haproxy.tls import bind_options, global_lines, is_tls, redirect_lines
from zerodown.routing import BalanceName, RoutingTable, ServiceSpec, parse_address

__all__ = ["NO_ROUTE_BACKEND", "render", "route_order", "server_line", "unsupported"]

NO_ROUTE_BACKEND: Final = "be_no_route"
# Every backend uses a balance HAProxy calls dynamic (weights change at
# runtime, `add server` accepted): hashes need `hash-type consistent`.
_BALANCE: Final[dict[BalanceName, str]] = {
    "round_robin": "roundrobin",
    "least_conn": "leastconn",
    "ip_hash": "source",
    "random_two": "random(2)",
}
_HASH_KEY: Final = {
    "path": "uri",
    "ip": "source",
    "header": "hdr({})",
    "cookie": "hash req.cook({})",  # `balance hash <expr>`: new in 2.6
}
# Retries only what never reached the app: a failed connect sends nothing, so
# any method may go to another server. empty-response and response-timeout
# may replay a POST the app already acted on (configuration.txt, retry-on).
# Not 0rtt-rejected: we never send 0-RTT to servers, and any flag past the
# connection's makes HAProxy keep an L7 copy of every request to replay it
# (callgrind: 33k of 84k instructions a request).
_RETRY_ON: Final = "conn-failure"
# A random (version 4) UUID: unique per request across threads, reloads and
# hosts. It replaced HAProxy's documented format of hex fields (frontend and
# client endpoints, accept time, counter, pid), whose nine log-format fields
# cost 6.3k instructions a request against the UUID's 0.1k (45.4k -> 39.1k,
# bench/callgrind_proxy.sh haproxy zerodown).
_UNIQUE_ID: Final = "%[uuid]"
_TCP_LOG_FORMAT: Final = '"%ci:%cp %b/%s %Tw/%Tc/%Tt %B"'


def unsupported(table: RoutingTable) -> list[str]:
    """What this table asks that HAProxy (as driven here) cannot carry, one line each.

    The config layer refuses these at load; apply refuses them too, rather
    than serve something else than asked.
    """
    problems = []
    for spec in table.services:
        where = f"services.{spec.name}"
        if spec.balance == "least_time":
            problems.append(
                f"{where}.balance = 'least_time' has no HAProxy twin "
                "(use least_conn, or the embedded or nginx data plane)"
            )
        if spec.split.cohorts:
            problems.append(f"{where}: canary cohorts are carried by the embedded data plane only")
        if spec.split.sticky_cookie:
            problems.append(
                f"{where}: a sticky canary cookie is carried by the embedded data plane only"
            )
        if spec.hold is not None and spec.hold.maintenance_html is not None:
            problems.append(
                f"{where}: a maintenance page is carried by the embedded data plane only"
            )
        if spec.cache is not None and spec.cache.authorized:
            problems.append(
                f"{where}.cache.authorized: HAProxy never answers a request with "
                "Authorization from its cache"
            )
    return problems


LOG_RING = "zerodown_log"
LOG_RING_SIZE = 1024 * 1024


def render(
    table: RoutingTable,
    listen: Sequence[str],
    settings: HaproxySettings,
    log: LogTarget | None = None,
) -> str:
    """The whole haproxy.cfg; `log`, where each request's line goes (latency.py)."""
    parts = [_global(table, settings, log), *_log_ring(log), _defaults(settings, log)]
    parts += cache_sections(table)
    parts += [_frontend(i, address, table, settings) for i, address in enumerate(listen)]
    parts += [_tcp_frontend(spec) for spec in table.tcp_services]
    parts += [_backend(spec, settings) for spec in table.http_services]
    parts += [_tcp_backend(spec) for spec in table.tcp_services]
    parts.append(_no_route())
    if settings.extra is not None:
        parts.append(f"# {settings.extra}, appended verbatim\n{settings.extra.read_text()}")
    return "\n".join(parts)


def _global(table: RoutingTable, settings: HaproxySettings, log: LogTarget | None) -> str:
    lines = [
        f"nbthread {settings.threads}",
        # expose-fd listeners: a reload's new worker takes the listening
        # sockets from the old one, so no connection is refused across it.
        f"stats socket {settings.stats_socket} mode 600 level admin expose-fd listeners",
        f"server-state-file {settings.server_state_file}",
        *global_lines(settings.tls),
    ]
    if log is not None and log.server.startswith("tcp:"):
        lines.append(f"log ring@{LOG_RING} len 1024 local0 info")  # streamed: _log_ring
    elif log is not None:
        where = log.server.removeprefix("unix:")  # HAProxy: a path is a unix datagram socket
        lines.append(f"log {where} len 1024 local0 info")
    if any(spec.hold is not None for spec in table.services):
        lines.append(f"lua-load {settings.hold_script}")  # the driver writes it (hold.py)
    return _section("global", *lines)


def _log_ring(log: LogTarget | None) -> list[str]:
    """Log lines kept in HAProxy's memory and streamed to the driver over TCP
    (dataplane/logstream.py): no datagram sent per request; `format raw`
    sends each as the bare log-format line and a newline."""
    if log is None or not log.server.startswith("tcp:"):
        return []
    ring = _section(
        f"ring {LOG_RING}",
        "format raw",
        "maxlen 1024",
        f"size {LOG_RING_SIZE}",  # a burst the driver has not read yet; then the oldest go
        "timeout connect 1s",
        "timeout server 10s",
        f"server zerodown {log.server.removeprefix('tcp:')}",
    )
    return [ring]


def _defaults(settings: HaproxySettings, log: LogTarget | None) -> str:
    logging = []
    if log is not None:
        logging = ["log global", f'log-format "{LATENCY_LOG_FORMAT % {"key": log.key}}"']
    return _section(
        "defaults",
        "mode http",
        *logging,
        "option redispatch 1",
        f"retry-on {_RETRY_ON}",
        "load-server-state-from-file global",
        f"timeout connect {_ms(settings.connect_timeout)}",
        f"timeout client {_ms(settings.client_timeout)}",
        f"timeout server {_ms(settings.server_timeout)}",
        f"timeout http-request {_ms(settings.http_request_timeout)}",
        f"timeout http-keep-alive {_ms(settings.client_timeout)}",
        f"timeout queue {_ms(settings.queue_timeout)}",
        f"timeout tunnel {_ms(settings.tunnel_timeout)}",
    )


def _frontend(index: int, address: str, table: RoutingTable, settings: HaproxySettings) -> str:
    host, port = parse_address(address)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    secure = is_tls(address, settings.tls)
    if secure and settings.tls is not None:
        bind += bind_options(settings.state_dir, settings.tls)
    proto = "https" if secure else "http"
    lines = [f"bind {bind}", *_expect_proxy(settings), "option forwardfor"]
    lines.append(f"unique-id-format {_UNIQUE_ID}")
    lines += _forwarded(settings, proto)
    redirect = redirect_lines(address, settings.tls)
    if redirect or any(spec.host != "*" for spec in table.http_services):
        # The Host header without its port, lowercased, as the router
        # compares it; set only where a rule reads it (a fetch per request).
        lines.append("http-request set-var(txn.host) req.hdr(host),field(1,:),lower")
    lines += redirect
    for rank, spec in enumerate(route_order(table.http_services)):
        lines += _route(rank, spec)
    lines.append(f"default_backend {NO_ROUTE_BACKEND}")
    return _section(f"frontend fe_{index}", *lines)


def _expect_proxy(settings: HaproxySettings) -> list[str]:
    """`proxy_protocol`: a PROXY header (v1 or v2) first from trusted peers, before
    TLS too; from then on `src` is the client it names (logs, acls, `balance
    source`), as the embedded proxy does. Others speak HTTP: a header of theirs
    is a 400, and a trusted peer without one is cut (configuration.txt,
    "tcp-request connection expect-proxy")."""
    if not settings.proxy_protocol or not settings.trusted_proxies:
        return []
    trusted = " ".join(settings.trusted_proxies)
    return [f"tcp-request connection expect-proxy layer4 if {{ src {trusted} }}"]


def _tcp_frontend(spec: ServiceSpec) -> str:
    """A tcp service's own listener, in `mode tcp`: bytes to its backend."""
    assert spec.listen is not None
    host, port = parse_address(spec.listen)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = backend_name(spec.name).replace("be_", "ft_", 1)
    # Not logged, with a format of its own: a log-format in `defaults` that
    # names HTTP fields (%Tr, %ST) makes a tcp frontend invalid.
    logging = ["no log", f"log-format {_TCP_LOG_FORMAT}"]
    lines = ["mode tcp", f"bind {bind}", *logging, *_tcp_access(spec)]
    return _section(f"frontend {name}", *lines, f"default_backend {backend_name(spec.name)}")


def _tcp_access(spec: ServiceSpec) -> list[str]:
    """allow/deny by the peer address, before anything is read (deny wins)."""
    guard = spec.guard
    lines = []
    if guard is not None and guard.allow:
        lines.append(f"tcp-request connection reject unless {{ src {' '.join(guard.allow)} }}")
    if guard is not None and guard.deny:
        lines.append(f"tcp-request connection reject if {{ src {' '.join(guard.deny)} }}")
    return lines


def _tcp_backend(spec: ServiceSpec) -> str:
    """Balanced per connection; a server's `check` with no httpchk is a TCP
    connect (configuration.txt, "check"), as the embedded one checks; a
    failed connect is retried on another server (`redispatch`)."""
    lines = ["mode tcp", *_balance(spec), f"retries {spec.tries - 1}"]
    if spec.health is not None:
        lines += ["option tcp-check", f"timeout check {_ms(spec.health.timeout)}"]
    lines += [f"server {server_line(spec, server)}" for server in servers(spec)]
    return _section(f"backend {backend_name(spec.name)}", *lines)


def _forwarded(settings: HaproxySettings, proto: str) -> list[str]:
    """X-Forwarded-* and X-Request-ID as the embedded proxy sets them
    (proxy/http.py): a client's own are kept only from a trusted proxy, so
    no client can name its own address or request id; `option forwardfor`
    then appends the client's address. The response carries the request's id
    from `http-after-response`, which also runs on cache hits and on the
    answers HAProxy makes itself (refusals, 503s)."""
    if not settings.trusted_proxies:
        # Nobody's own are kept: one regex drops them all (identity.py), and
        # ours are added. `unique-id-header` adds the id without evaluating a
        # log-format as `set-header … %[unique-id]` does (1.2k instructions a
        # request); the response reads it again from %[unique-id] (computed
        # once per stream), no variable needed.
        return [
            *identity_rules(trusted=False),
            f"http-request add-header X-Forwarded-Proto {proto}",
            "http-request add-header X-Forwarded-Host %[req.hdr(host)]",
            "unique-id-header X-Request-ID",
            "http-after-response set-header X-Request-ID %[unique-id]",
        ]
    return [
        f"acl trusted src {' '.join(settings.trusted_proxies)}",
        # Read by a sticky backend, to add Secure to its cookie (_sticky).
        "http-request set-var(txn.https) bool(1) if trusted "
        "{ req.hdr(x-forwarded-proto) -i https }",
        *identity_rules(trusted=True),
        "http-request del-header X-Forwarded-For unless trusted",
        f"http-request set-header X-Forwarded-Proto {proto} unless trusted",
        "http-request set-header X-Forwarded-Host %[req.hdr(host)] unless trusted",
        # A trusted proxy's id is kept; one that sent none gets one too.
        "http-request set-header X-Request-ID %[unique-id] "
        "unless trusted { req.hdr(x-request-id) -m found }",
        "http-request set-var(txn.request_id) req.hdr(x-request-id)",
        "http-after-response set-header X-Request-ID %[var(txn.request_id)]",
    ]


def route_order(services: Sequence[ServiceSpec]) -> list[ServiceSpec]:
    """Services in the order their `use_backend` rules are tried: HAProxy takes
    the first that matches, so this is the embedded router's precedence
    (proxy/router.py): exact hosts, then wildcards by longest suffix, then
    "*"; within each, the longest path prefix first."""

    def key(spec: ServiceSpec) -> tuple[int, int, int]:
        host = spec.host.lower()
        kind, suffix = (
            (2, 0) if host == "*" else (1, len(host)) if host.startswith("*.") else (0, 0)
        )
        return kind, -suffix, -len(spec.path.rstrip("/"))

    return sorted(services, key=key)


def _route(rank: int, spec: ServiceSpec) -> list[str]:
    acls, conditions = [], []
    host = spec.host.lower()
    if host.startswith("*."):
        acls.append(f"acl r{rank}_host var(txn.host) -m end {host[1:]}")
        conditions.append(f"r{rank}_host")
    elif host != "*":
        acls.append(f"acl r{rank}_host var(txn.host) -m str {host}")
        conditions.append(f"r{rank}_host")
    stem = spec.path.rstrip("/")
    if stem:
        # A prefix matches at a segment boundary: "/api" takes "/api" and
        # "/api/x", not "/apix" (router.prefix_matches).
        acls.append(f"acl r{rank}_path path -m str {stem}")
        acls.append(f"acl r{rank}_path path -m beg {stem}/")
        conditions.append(f"r{rank}_path")
    condition = f" if {' '.join(conditions)}" if conditions else ""
    return [*acls, f"use_backend {backend_name(spec.name)}{condition}"]


def _backend(spec: ServiceSpec, settings: HaproxySettings) -> str:
    backend = backend_name(spec.name)
    lines = [*_balance(spec), f"retries {spec.tries - 1}", *hold_rules(spec, backend)]
    # allow/deny, block, rate_limit: before any server
    lines += guard_lines(spec, settings.trusted_proxies)
    lines += silence_rule(spec, settings.request_stats, settings.counted_map)  # after refusals
    lines += cache_backend(spec, settings.cache_map)  # after the refusals, before any server
    if spec.health is not None:
        lines.append(f"option httpchk GET {spec.health.path}")
        lines.append(f"timeout check {_ms(spec.health.timeout)}")
        statuses = spec.health.expect_status
        expect = "|".join(str(s) for s in statuses) if statuses else "[23][0-9][0-9]"
        lines.append(f"http-check expect rstatus ^({expect})$")
    stem = spec.path.rstrip("/")
    if spec.strip_prefix and stem:
        # "/api/x" -> "/x", "/api" -> "/" (router.strip_prefix); the query stays.
        lines.append(f"http-request replace-path ^{_regex(stem)}/?(.*)$ /\\1")
    lines += _sticky(spec, settings)
    lines += [f"server {server_line(spec, server)}" for server in servers(spec)]
    return _section(f"backend {backend}", *lines)


def _sticky(spec: ServiceSpec, settings: HaproxySettings) -> list[str]:
    """`sticky`: HAProxy's own persistence cookie (configuration.txt, "cookie").

    `dynamic`: each server's value is a hash of the key and its address, so
    servers added at run time get one, it is opaque, and it cannot be made
    without the key; `insert indirect`: set only when the client's does not
    already name the server that answered (a stale or forged one is rewritten,
    `option redispatch` moves a client whose server is gone or down);
    `nocache`: the response that sets it is not cached for others. A server
    in `drain` keeps its cookie clients, as the embedded proxy does. `maxlife`
    ignores a cookie older than ttl, as the browser drops it (Max-Age).
    """
    sticky = spec.sticky
    if sticky is None:
        return []
    ttl = math.ceil(sticky.ttl)
    attributes = f'attr "SameSite=Lax" attr "Max-Age={ttl}"'
    lines = [
        f"cookie {sticky.cookie} insert indirect nocache dynamic httponly "
        f"maxlife {ttl}s {attributes}",
        f"dynamic-cookie-key {settings.sticky_key}",
    ]
    # Secure when the client came over TLS: a TLS listener's (ssl_fc), or a
    # trusted proxy says so (_forwarded);
    # after-response: the cookie is inserted after every http-response rule.
    lines.append(
        f"http-after-response replace-header Set-Cookie ^({_regex(sticky.cookie)}=.*) "
        "\\1;\\ Secure if { var(txn.https) -m bool } || { ssl_fc }"
    )
    return lines


def _balance(spec: ServiceSpec) -> list[str]:
    if spec.balance in _BALANCE:
        lines = [f"balance {_BALANCE[spec.balance]}"]
        return lines + (["hash-type consistent"] if spec.balance == "ip_hash" else [])
    if spec.balance != "hash":
        raise ValueError(f"balance {spec.balance!r} has no HAProxy twin")
    kind, _, name = spec.hash_key.partition(":")
    return [f"balance {_HASH_KEY[kind].format(name)}", "hash-type consistent"]


# A server from a runtime `add server` inherits no defaults: HAProxy 2.6
# gives it no idle connection pool (pool-max-conn 0, purge delay 0), where a
# server from the config file has an unbounded one purged every 5 s. Without
# it a keep-alive client whose requests take turns between servers costs the
# app a new connection per request: through a deploy of zerodown's demo app
# (uvicorn, 2 instances, wrk -c200), 12k req/s with a 242 ms p99, against 34k
# and 10 ms with it. Said on every line, so both kinds of server are alike.
IDLE_POOL: Final = "pool-max-conn -1 pool-purge-delay 5s"


def server_line(spec: ServiceSpec, server: Server) -> str:
    """`<name> <address> <keywords>`: the same words in the config and in a
    runtime `add server` (management.txt lists which keywords it takes)."""
    words = [server.name, server.address, f"weight {server.weight}"]
    if spec.health is not None:
        health = spec.health
        words.append(f"check inter {_ms(health.interval)} rise {health.rise} fall {health.fall}")
        # Passive ejection only beside an active check: a server marked down
        # by errors comes back by passing checks; with none it would stay out.
        if spec.passive is not None:
            limit = spec.passive.consecutive_errors
            layer = "layer4" if spec.mode == "tcp" else "layer7"  # connects, or 5xx too
            words.append(f"observe {layer} error-limit {limit} on-error mark-down")
    if spec.slow_start > 0:
        words.append(f"slowstart {_ms(spec.slow_start)}")
    if spec.mode == "http":
        words.append(IDLE_POOL)
    if server.state == "maint":
        words.append("disabled")
    return " ".join(words)


def _no_route() -> str:
    return _section(
        f"backend {NO_ROUTE_BACKEND}",
        'http-request return status 404 content-type text/plain string "no route\\n"',
    )


def _section(head: str, *lines: str) -> str:
    return head + "\n" + "".join(f"    {line}\n" for line in lines)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _regex(text: str) -> str:
    return "".join(c if c.isalnum() or c in "/-_" else "\\" + c for c in text)
