"""RoutingTable + settings -> nginx.conf text. Pure: no files, no processes.

Open-source nginx has no runtime API. With `upstreams = "reload"` every
change is a whole new configuration and a reload; with "lua" an HTTP
service's targets and weights are a table its `balancer_by_lua` upstream
reads (upstreams.py, `table` here), and the text stays the same through a
deploy step. What this module decides:

- One `upstream` per service holding the stable *and* the canary targets,
  with weights that carry the split (`server_weights`), rather than
  `split_clients` in front of two upstreams. With one upstream a failed try
  can go on to the other pool (`proxy_next_upstream`), `max_fails` and
  `keepalive` are per target whatever pool it is in, and the weights are
  exact for any number of targets; `split_clients` would hash a key into
  two upstreams and a retry could never leave the pool it landed in.
- Targets that take no new requests (draining, down, weight 0, failing our
  health checks, or in a pool at 0% of the split) stay listed as `down`, so
  the file shows the whole table; requests already in flight keep their
  target because they live in the old workers, which a reload lets finish.
- "A busy app is not a dead app": when health has every routable target of
  a pool down, the pool routes to all of them anyway (panic), as the
  embedded proxy does; a 502 for everyone is never better than a try.
- Every location answers with X-Request-ID (a trusted proxy's, or ours:
  `request_id`) and logs one JSON line per request to the driver's socket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce

from zerodown.dataplane.accesslog import LogTarget
from zerodown.dataplane.nginx import proxy_protocol, upstreams
from zerodown.dataplane.nginx import tls as nginx_tls
from zerodown.dataplane.nginx.cache import cache_http, cache_location
from zerodown.dataplane.nginx.guard import guard_http, guard_location, guard_named, realip
from zerodown.dataplane.nginx.hold import holds, socket_path
from zerodown.dataplane.nginx.logfile import FILE_BUFFER, FILE_FLUSH
from zerodown.dataplane.nginx.settings import KEEPALIVE_REQUESTS, NginxSettings, Paths
from zerodown.dataplane.nginx.sticky import (
    SECURE_MAP,
    location_lines,
    sticky_blocks,
    unsupported_sticky,
)
from zerodown.dataplane.nginx.stream import load_stream, stream_block
from zerodown.dataplane.nginx.streamlog import STREAM_LOG
from zerodown.dataplane.request_stats import counted
from zerodown.proxy.http import CLIENT_IDENTITY_HEADERS
from zerodown.proxy.router import prefix_matches
from zerodown.proxy.sticky import key_bytes
from zerodown.routing import RoutingTable, ServiceSpec, TargetSpec, parse_address

__all__ = [
    "CONTROL_PATH",
    "FILE_LOG_FORMAT",
    "LOG_FORMAT",
    "STATUS_PATH",
    "LogTarget",
    "Server",
    "in_panic",
    "render",
    "server_weights",
    "table",
    "unsupported",
    "upstream_name",
]

CONTROL_PATH = "/zerodown/generation"
STATUS_PATH = "/zerodown/status"  # stub_status: open client connections
# Fixed resolution of the split: weights are integers, so a share in percent
# is multiplied by this before rounding (a 0.01% step), then reduced by gcd.
WEIGHT_SCALE = 100
# One JSON object per request; keys short because each is a datagram. "k"
# carries LogTarget.key, so a datagram from anyone but this nginx is ignored.
LOG_FORMAT = (
    '{"k":"%(key)s","svc":"$proxy_host","addr":"$upstream_addr","ustatus":"$upstream_status",'
    '"urt":"$upstream_response_time","rt":"$request_time","status":"$status",'
    '"msec":"$msec","zr":"$zd_refused","rule":"$zd_rule","zsvc":"$zd_svc",'
    '"zc":"$zd_refused_client","cache":"$upstream_cache_status"}'
)
# The same for the log file (logfile.py), tab-separated, in accesslog.FILE_FIELDS'
# order: no per-request value but the upstream time (ms), so lines repeat
# (the refusal's rule and client are set on a refused request only).
FILE_LOG_FORMAT = "\t".join(
    [
        *("%(key)s", "$proxy_host", "$upstream_addr", "$upstream_status"),
        *("$upstream_response_time", "$status", "$zd_refused", "$zd_svc"),
        *("$zd_rule", "$zd_refused_client", "$upstream_cache_status"),
    ]
)
_BALANCE = {
    "round_robin": "",
    "least_conn": "least_conn;",
    "ip_hash": "ip_hash;",
    "random_two": "random two least_conn;",
    # least_time is NGINX Plus only; least_conn is its open-source nearest.
    "least_time": "least_conn;",
}
_HASH_KEYS = {"path": "$uri", "ip": "$remote_addr"}
_BACKUP_BALANCERS = ("round_robin", "least_conn", "least_time")
_REQUEST_ID_HEADER = "add_header X-Request-ID $zd_request_id always;"
# Beyond the hold timeout, the app's own time to answer a held request.
HOLD_READ_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class Server:
    """One `server` line of an upstream: weight None renders `down`."""

    address: str
    weight: int | None
    pool: str


def upstream_name(service: str) -> str:
    return f"zd_{service}"


def render(
    services: Sequence[ServiceSpec],
    listen: Sequence[str],
    settings: NginxSettings,
    generation: int,
    unhealthy: frozenset[tuple[str, str]] = frozenset(),
    log: LogTarget | None = None,
) -> str:
    """The whole nginx.conf; `unhealthy` holds (service, address) our checks took out."""
    paths = Paths(settings.state_dir)
    if log is None:  # `zerodown render`: where the driver would have nginx log
        where = paths.access_log if settings.log_transport == "file" else paths.access_socket
        log = LogTarget(f"{'file' if settings.log_transport == 'file' else 'unix'}:{where}")
    tcp = [s for s in services if s.mode == "tcp"]
    services = [s for s in services if s.mode == "http"]  # tcp ones: stream.py
    lua = settings.upstreams == "lua"
    http = [
        *_http_common(settings, paths, log, request_id(settings, generation)),
        *(upstreams.http_lines(paths.lua, paths.upstreams, generation) if lua else []),
        *guard_http(services),
        *cache_http(services, paths.cache),
        *(_upstream(s, unhealthy, settings, paths) for s in services),
        *_sticky(services, unhealthy, settings),
        *_servers(services, listen, unhealthy, settings, log),
        *nginx_tls.redirect_block(listen, settings.tls),
        _control_server(paths, generation, lua),
    ]
    http = _proxied(settings, http)  # the server blocks' TCP listeners, when asked
    if settings.extra_http.strip():
        http.append(settings.extra_http)
    main = _main(settings, paths)
    stream_log = (paths.access_log.with_name(STREAM_LOG), log.key)  # streamlog.py
    stream = stream_block(tcp, _tcp_weights(tcp, unhealthy), log=stream_log)
    modules = [*load_stream(tcp), *(upstreams.main_lines() if lua else [])]
    main = [main[0], *modules, *main[1:]]  # load_module: before any block
    return "\n".join([*main, "http {", _indent(http), "}", *stream, ""])


def table(
    services: Sequence[ServiceSpec],
    settings: NginxSettings,
    generation: int,
    unhealthy: frozenset[tuple[str, str]] = frozenset(),
) -> str:
    """The table zerodown_upstreams.lua routes by (upstreams.py): every HTTP
    service whose upstream it carries, with the weights its `server` lines
    would have had, for the configuration of `generation`."""
    carried = [s for s in services if uses_lua(s, settings)]
    weights = {}
    for service in carried:
        down = frozenset(a for s, a in unhealthy if s == service.name)
        servers = server_weights(service, down)
        weights[service.name] = [(s.address, s.weight) for s in servers if s.weight]
    logged = settings.request_stats == "canary"  # "always": every line is logged anyway
    count = frozenset(s.name for s in carried if logged and counted(s, settings.request_stats))
    return upstreams.table_text(carried, weights, generation, count)


def uses_lua(service: ServiceSpec, settings: NginxSettings) -> bool:
    """Whether the Lua balancer picks this service's targets. Not a tcp
    service (stream), nor a held one (hold.py), nor a sticky one (its cookie
    routes to per-target upstreams), nor one with a target named by host
    name: the balancer takes addresses only, where nginx resolves a name in
    a `server` line when it loads the configuration."""
    return (
        settings.upstreams == "lua"
        and service.mode == "http"
        and not holds(service)
        and service.sticky is None
        and all(
            upstreams.is_ip(t.address) for t in (*service.stable.targets, *service.canary.targets)
        )
    )


def _tcp_weights(
    services: Sequence[ServiceSpec], unhealthy: frozenset[tuple[str, str]]
) -> dict[str, list[tuple[str, int | None]]]:
    weights = {}
    for service in services:
        down = frozenset(a for s, a in unhealthy if s == service.name)
        weights[service.name] = [(s.address, s.weight) for s in server_weights(service, down)]
    return weights


def server_weights(service: ServiceSpec, unhealthy: frozenset[str] = frozenset()) -> list[Server]:
    """Every target of the service with the integer weight that carries the split."""
    stable = _healthy(service.stable.targets, unhealthy)
    canary = _healthy(service.canary.targets, unhealthy)
    share_canary = service.split.canary_weight if canary else 0.0
    if not stable and canary:
        share_canary = 100.0  # no stable target can serve: better the canary than a 502
    raw = {
        **_pool_weights(stable, 100.0 - share_canary),
        **_pool_weights(canary, share_canary),
    }
    divisor = reduce(math.gcd, raw.values(), 0) or 1
    return [
        Server(t.address, raw[t.address] // divisor if t.address in raw else None, pool)
        for pool, targets in (
            ("stable", service.stable.targets),
            ("canary", service.canary.targets),
        )
        for t in targets
    ]


def in_panic(
    table: RoutingTable, unhealthy: frozenset[tuple[str, str]]
) -> frozenset[tuple[str, str]]:
    """(service, address) routed although our checks have them out: every
    routable target of their pool is out, so the pool routes to all (_healthy)."""
    panic = set()
    for spec in table.services:
        for pool in (spec.stable.targets, spec.canary.targets):
            routable = [t.address for t in pool if t.state == "ready" and t.weight > 0]
            if routable and all((spec.name, a) in unhealthy for a in routable):
                panic |= {(spec.name, a) for a in routable}
    return frozenset(panic)


def _healthy(targets: Iterable[TargetSpec], unhealthy: frozenset[str]) -> list[TargetSpec]:
    routable = [t for t in targets if t.state == "ready" and t.weight > 0]
    healthy = [t for t in routable if t.address not in unhealthy]
    return healthy or routable  # panic: all out by health means all in


def _pool_weights(targets: list[TargetSpec], share: float) -> dict[str, int]:
    if share <= 0 or not targets:
        return {}
    total = sum(t.weight for t in targets)
    return {t.address: max(1, round(share * WEIGHT_SCALE * t.weight / total)) for t in targets}


# -- blocks ----------------------------------------------------------------------


def _main(settings: NginxSettings, paths: Paths) -> list[str]:
    user = [f"user {settings.user};"] if settings.user else []
    return [
        "# Generated by zerodown: edits are lost at the next deploy step.",
        *user,
        f"worker_processes {settings.workers};",
        f"pid {paths.pid};",
        f"error_log {paths.error_log} warn;",
        f"worker_shutdown_timeout {_seconds(settings.worker_shutdown_timeout)};",
        "events { worker_connections 4096; }",
    ]


def _access_log(log: LogTarget) -> list[str]:
    if log.server.startswith("file:"):
        fmt = f"log_format zerodown '{FILE_LOG_FORMAT % {'key': log.key}}';"
    else:
        fmt = f"log_format zerodown escape=json '{LOG_FORMAT % {'key': log.key}}';"
    return [fmt, _access_log_line(log)]


def _access_log_line(log: LogTarget, condition: str = "") -> str:
    """The `access_log` directive to the driver; the same buffer and flush
    wherever it appears, so every location shares one buffer (nginx refuses
    two directives on one file with different ones)."""
    suffix = f" {condition};" if condition else ";"
    if log.server.startswith("file:"):
        where = log.server.removeprefix("file:")
        return f"access_log {where} zerodown buffer={FILE_BUFFER} flush={FILE_FLUSH}{suffix}"
    return f"access_log syslog:server={log.server},nohostname zerodown{suffix}"


def _refusals_only(log: LogTarget) -> str:
    """A location whose service is not counted now (request_stats.py) still logs
    what its own rules refuse: each refusal sets $zd_refused (guard.py); the
    429 of a rate limit ends in a named location, which logs at http level."""
    return _access_log_line(log, "if=$zd_refused")


def request_id(settings: NginxSettings, generation: int) -> str:
    """The X-Request-ID nginx gives a request (quoted, for a directive).

    Not nginx's $request_id: that draws 16 bytes from OpenSSL's RAND_bytes
    for every request, 5-6k instructions under OpenSSL 3, a fifth of what a
    proxied request costs nginx (bench/README.md). Unique without it:
    $connection is a serial number the workers of one configuration share,
    $connection_requests the request's number on that connection (per stream
    on HTTP/2), the generation changes with every start and reload (each
    starts the serial again), and the prefix tells this zerodown's ids from
    another host's. Predictable, as the embedded proxy's are: an id names a
    request, it guards nothing."""
    prefix = f"{settings.request_id_prefix}-" if settings.request_id_prefix else ""
    return f'"{prefix}{generation}-${{connection}}-${{connection_requests}}"'


def _http_common(settings: NginxSettings, paths: Paths, log: LogTarget, rid: str) -> list[str]:
    temp = paths.temp
    return [
        *(f"{kind}_temp_path {temp / kind};" for kind in ("client_body", "proxy")),
        *(f"{kind}_temp_path {temp / kind};" for kind in ("fastcgi", "uwsgi", "scgi")),
        *_access_log(log),
        "server_tokens off;",
        f"keepalive_requests {KEEPALIVE_REQUESTS};",
        # Client-identity headers are taken only from trusted_proxies, as the
        # embedded proxy does: from anyone else they are replaced, so no
        # client can name another address or another request id.
        # With trusted proxies, realip makes $remote_addr the client they
        # forward for (guard.py); the peer stays $realip_remote_addr.
        *_client_lines(settings),
        # Exact-match maps, no regex: an untrusted request costs one hash
        # lookup each (a regex map ran PCRE on every request).
        *_trusted_or("$http_x_request_id", rid, "zd_request_id"),
        *_trusted_or("$http_x_forwarded_host", "$http_host", "zd_forwarded_host"),
        # Upgrade for WebSockets; otherwise an empty Connection keeps the
        # upstream connection alive for `keepalive`.
        "map $http_upgrade $zd_connection { default upgrade; '' ''; }",
        "proxy_http_version 1.1;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header Connection $zd_connection;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        *_identity_headers(settings, rid),
        *_client_identity(settings),
        # Safe retries only: a connect error or a timeout before any answer,
        # and (nginx's default, kept: no `non_idempotent`) never a POST or
        # PATCH once it was sent, since the app may have acted on it.
        "proxy_next_upstream error timeout;",
        *nginx_tls.http_lines(settings.tls),
    ]


def _identity_headers(settings: NginxSettings, ours: str) -> list[str]:
    """X-Forwarded-For, -Host and X-Request-ID to the app, and the id back.

    With no trusted proxy nobody's own are kept, so the hot path reads
    nginx's variables straight (no geo, no map, no address parsed per
    request); the $zd_ maps stay defined for the refusal answers (guard.py).
    `ours` is request_id's: evaluated once for the app and once for the
    client, which is cheaper than a map that would cache it.
    """
    if settings.trusted_proxies:
        forwarded_for, host, rid = "$zd_forwarded_for", "$zd_forwarded_host", "$zd_request_id"
    else:
        peer = "$remote_addr"  # no realip without trusted proxies: the peer itself
        forwarded_for, host, rid = peer, "$http_host", ours
    return [
        f"proxy_set_header X-Forwarded-For {forwarded_for};",
        f"proxy_set_header X-Forwarded-Host {host};",
        f"proxy_set_header X-Request-ID {rid};",
        f"add_header X-Request-ID {rid} always;",
    ]


def _client_identity(settings: NginxSettings) -> list[str]:
    """X-Real-IP, Forwarded and the other fields apps believe about the
    client (proxy/http.CLIENT_IDENTITY_HEADERS) pass only from a trusted
    proxy, as on the embedded data plane. An empty proxy_set_header value
    drops the field at no cost per request (nginx skips it when it builds the
    request); a trusted proxy's goes through a map of $zd_trusted. Spellings
    with an underscore for a dash nginx drops already (underscores_in_headers
    off, its default)."""
    names = sorted(name.decode() for name in CLIENT_IDENTITY_HEADERS)
    if not settings.trusted_proxies:
        return [f'proxy_set_header {name} "";' for name in names]
    lines = []
    for name in names:
        snake = name.replace("-", "_")
        lines.append(f"map $zd_trusted $zd_keep_{snake} {{ 1 $http_{snake}; default ''; }}")
        lines.append(f"proxy_set_header {name} $zd_keep_{snake};")
    return lines


def _trusted_or(incoming: str, ours: str, name: str) -> list[str]:
    """$name: `incoming` when a trusted proxy sent one, else `ours`."""
    return [
        f"map $zd_trusted ${name} {{ default {ours}; 1 ${name}_in; }}",
        f"map {incoming} ${name}_in {{ '' {ours}; default {incoming}; }}",
    ]


def _client_lines(settings: NginxSettings) -> list[str]:
    """Who the client is, whom we trust, and the X-Forwarded-For the app gets.

    With `proxy_protocol` the client a trusted header names stands in for the
    peer everywhere, as if it had connected itself (nginx/proxy_protocol.py).
    """
    if settings.proxy_protocol:
        peer, lines = "$remote_addr", proxy_protocol.realip(settings.trusted_proxies)
    else:
        peer, lines = "$realip_remote_addr", realip(settings.trusted_proxies)
    return [
        *lines,
        _trusted(settings.trusted_proxies, peer),
        "map $http_x_forwarded_for $zd_forwarded_chain "
        f"{{ '' {peer}; default '$http_x_forwarded_for, {peer}'; }}",
        f"map $zd_trusted $zd_forwarded_for {{ 1 $zd_forwarded_chain; default {peer}; }}",
    ]


def _proxied(settings: NginxSettings, blocks: list[str]) -> list[str]:
    """`proxy_protocol`: each block with a TCP `listen` expects the header there
    (the control server's unix socket and blocks with no listener are left as they are)."""
    if not settings.proxy_protocol:
        return blocks
    return [proxy_protocol.proxied_server(block) for block in blocks]


def _trusted(cidrs: Sequence[str], peer: str) -> str:
    entries = " ".join(f"{cidr} 1;" for cidr in cidrs)
    return f"geo {peer} $zd_trusted {{ default 0; {entries} }}".replace("  ", " ")


def _upstream(
    service: ServiceSpec,
    unhealthy: frozenset[tuple[str, str]],
    settings: NginxSettings,
    paths: Paths,
) -> str:
    if holds(service):
        return _hold_upstream(service, paths)
    down = frozenset(a for s, a in unhealthy if s == service.name)
    servers = server_weights(service, down)
    if not any(s.weight for s in servers):
        return f"# {service.name}: no target takes traffic (503)"
    name, keepalive = upstream_name(service.name), settings.keepalive
    if uses_lua(service, settings):  # its targets are in the table, not here
        return upstreams.upstream_block(name, service.name, keepalive, KEEPALIVE_REQUESTS)
    passive = service.passive
    fails = f"max_fails={passive.consecutive_errors}" if passive else "max_fails=0"
    # fail_timeout takes whole seconds only.
    timeout = f" fail_timeout={math.ceil(passive.base_ejection_time)}s" if passive else ""
    lines = [f"zone {name} 64k;", _balance(service)]
    for s in servers:
        state = f"weight={s.weight} {fails}{timeout}" if s.weight else "down"
        lines.append(f"server {_upstream_address(s.address)} {state};  # {s.pool}")
    lines += _panic_backups(service, servers)
    lines += [f"keepalive {keepalive};", f"keepalive_requests {KEEPALIVE_REQUESTS};"]
    body = _indent(line for line in lines if line)
    return f"upstream {name} {{\n{body}\n}}"


def _hold_upstream(service: ServiceSpec, paths: Paths) -> str:
    """Recreate's gap: the driver holds the requests (hold.py). No keepalive:
    one connection per held request, piped to the new target once it serves."""
    where = socket_path(paths.prefix, service.name)
    body = _indent([f"server unix:{where} max_fails=0;  # held by zerodown"])
    return f"upstream {upstream_name(service.name)} {{\n{body}\n}}"


def _panic_backups(service: ServiceSpec, servers: list[Server]) -> list[str]:
    """The same targets again as `backup` that never count failures.

    When max_fails has every server of an upstream marked failed, nginx
    answers 502 "no live upstreams" for the whole fail_timeout, even to a
    target that is back a moment later (measured: 10s of 502s after both
    targets of a pool restarted). Backups are tried only then: the panic
    routing of the embedded proxy. nginx allows no backup with the hash,
    ip_hash and random balancers; those keep its behaviour.
    """
    if service.passive is None or service.balance not in _BACKUP_BALANCERS:
        return []
    return [
        f"server {_upstream_address(s.address)} weight={s.weight} max_fails=0 backup;  # panic"
        for s in servers
        if s.weight
    ]


def _balance(service: ServiceSpec) -> str:
    if service.balance != "hash":
        return _BALANCE[service.balance]
    kind, _, name = service.hash_key.partition(":")
    key = _HASH_KEYS.get(kind) or f"${kind}_{name.lower().replace('-', '_')}"
    return f"hash {key.replace('$header_', '$http_')} consistent;"


def _servers(
    services: Sequence[ServiceSpec],
    listen: Sequence[str],
    unhealthy: frozenset[tuple[str, str]],
    settings: NginxSettings,
    log: LogTarget,
) -> list[str]:
    tls = settings.tls
    hosts: dict[str, list[ServiceSpec]] = {}
    for s in services:
        hosts.setdefault(s.host.lower(), []).append(s)
    hosts.setdefault("*", [])  # a catch-all answers 404 for hosts nobody routes
    for name in nginx_tls.sni_hosts(tls):
        hosts.setdefault(name, [])  # routed as its host would be, with its certificate
    listen = nginx_tls.route_listen(listen, tls)
    blocks = []
    for host in sorted(hosts, key=lambda h: h == "*"):
        routed = _routes_for(host, hosts)
        listens = [nginx_tls.listen_line(a, default=host == "*", tls=tls) for a in listen]
        body = [*listens, f"server_name {'_' if host == '*' else host};"]
        body += nginx_tls.certificate_lines(host, tls)
        for s in sorted(routed, key=lambda s: s.path):
            lua = uses_lua(s, settings)
            body.append(_location(s, unhealthy, _quiet(s, settings, log, lua), lua))
        body += guard_named(routed)
        if not any(s.path == "/" for s in routed):
            body.append("location / { return 404; }")
        blocks.append(f"server {{\n{_indent(body)}\n}}")
    return blocks


def _quiet(service: ServiceSpec, settings: NginxSettings, log: LogTarget, lua: bool) -> str | None:
    """The access_log of a location whose requests are not all counted
    (request_stats.py); None where every request is logged. Under the Lua
    balancer the table says which are (upstreams.py), so that a canary
    starting or ending changes no text, and reloads nothing; but not for a
    cached service, whose hits nginx answers without the balancer."""
    if settings.request_stats == "always":
        return None
    if lua and service.cache is None:
        return _access_log_line(log, upstreams.COUNTED_LOG)
    return None if counted(service, settings.request_stats) else _refusals_only(log)


def _routes_for(host: str, hosts: dict[str, list[ServiceSpec]]) -> list[ServiceSpec]:
    """The routes a request for `host` can take, as proxy/router.py matches them.

    The embedded router tries the exact host, then the wildcards that cover
    it (longest suffix first), then "*", each by longest prefix. nginx picks
    one server block by name and then the longest prefix in it, so a block
    also holds the less specific hosts' routes, except those a more specific
    route already covers (which the router would never reach).
    """
    chain = [host, *_covering_wildcards(host, hosts), "*"]
    routes: list[ServiceSpec] = []
    for level in dict.fromkeys(chain):  # in order, once each
        for spec in hosts.get(level, []):
            covered = any(prefix_matches(r.path.encode(), spec.path.encode()) for r in routes)
            if not covered or level == host:
                routes.append(spec)
    return routes


def _covering_wildcards(host: str, hosts: dict[str, list[ServiceSpec]]) -> list[str]:
    wild = [h for h in hosts if h.startswith("*.") and h != host and host.endswith(h[1:])]
    return sorted(wild, key=len, reverse=True)


def _location(
    service: ServiceSpec,
    unhealthy: frozenset[tuple[str, str]],
    quiet: str | None = None,
    lua: bool = False,
) -> str:
    """The service's location(s); `quiet`, the access_log that logs only
    refusals, when its requests are not counted now; `lua`, when
    zerodown_upstreams.lua picks its targets (and, for a balancer that
    weighs requests in flight, must hear each request end)."""
    down = frozenset(a for s, a in unhealthy if s == service.name)
    stem = service.path.rstrip("/")
    body = [quiet] if quiet else []
    body += guard_location(service)  # refusals first: before any rewrite or upstream
    if holds(service):
        assert service.hold is not None
        # One try (the hold socket), and a read timeout past the hold's, so
        # nginx waits for the held request's answer rather than give up first.
        if service.strip_prefix and stem:
            body.append(f"rewrite ^{stem}/?(.*)$ /$1 break;")
        body += [
            "proxy_next_upstream off;",
            f"proxy_read_timeout {_seconds(service.hold.timeout + HOLD_READ_MARGIN)};",
            f"proxy_pass http://{upstream_name(service.name)};",
        ]
    elif not any(s.weight for s in server_weights(service, down)):
        body.append("return 503;")
    else:
        if service.strip_prefix and stem:
            body.append(f"rewrite ^{stem}/?(.*)$ /$1 break;")
        body += [
            f"proxy_next_upstream_tries {service.tries};",
            f"proxy_next_upstream_timeout {_seconds(service.retry_timeout)};",
            *_proxy_pass(service),
            *([upstreams.LOG_LINE] if lua and upstreams.counts_busy(service) else []),
        ]
        body += _cache(service)
    block = _indent(body)
    # A prefix matches on a segment boundary, as in proxy/router.py: "/api"
    # takes "/api" and "/api/x", never "/apix". ^~: a matching prefix is
    # final, so no regex location (from extra_http) can steal a route.
    if not stem:
        return f"location ^~ / {{\n{block}\n}}"
    return f"location = {stem} {{\n{block}\n}}\nlocation ^~ {stem}/ {{\n{block}\n}}"


def _sticky(
    services: Sequence[ServiceSpec], unhealthy: frozenset[tuple[str, str]], settings: NginxSettings
) -> list[str]:
    """The upstreams and maps of sticky services (dataplane/nginx/sticky.py)."""
    sticky = [s for s in services if s.sticky is not None]
    if not sticky:
        return []
    key = key_bytes(settings.sticky_key)
    blocks = [SECURE_MAP]
    for service in sticky:
        down = frozenset(a for s, a in unhealthy if s == service.name)
        blocks += sticky_blocks(service, down, key, settings.keepalive)
    return blocks


def _proxy_pass(service: ServiceSpec) -> list[str]:
    if service.sticky is not None:
        return location_lines(service, _REQUEST_ID_HEADER)
    return [f"proxy_pass http://{upstream_name(service.name)};"]


def _cache(service: ServiceSpec) -> list[str]:
    lines = cache_location(service)
    if lines and service.sticky is None:
        # nginx inherits add_header only into a block with none of its own
        # (sticky's location_lines repeats it already).
        lines.append(_REQUEST_ID_HEADER)
    return lines


def _control_server(paths: Paths, generation: int, lua: bool = False) -> str:
    # Served by the workers of this configuration only: the driver knows a
    # reload is live when this answers the generation it rendered.
    body = [
        f"listen unix:{paths.control_socket};",
        "access_log off;",
        f'location = {CONTROL_PATH} {{ return 200 "{generation}"; }}',
        f"location = {STATUS_PATH} {{ stub_status; }}",
        *(upstreams.control_locations() if lua else []),
    ]
    return f"server {{\n{_indent(body)}\n}}"


def _upstream_address(address: str) -> str:
    host, port = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(value: float) -> str:
    # nginx time units: whole milliseconds are exact for any config value.
    return f"{max(1, round(value * 1000))}ms"


def _indent(lines: Iterable[str]) -> str:
    return "\n".join("    " + line.replace("\n", "\n    ") for line in lines)


def unsupported(service: ServiceSpec) -> list[str]:
    """What of `service` this driver cannot carry, one line per key, said for the user.

    For config validation to refuse at load (issue 11: never silently ignore).
    """
    checks = [
        (bool(service.split.cohorts), "split.cohorts (header/cookie rules to a pool)"),
        (service.split.sticky_cookie is not None, "split.sticky_cookie"),
        (service.slow_start > 0, "slow_start (NGINX Plus only)"),
        (
            service.hold is not None and service.hold.maintenance_html is not None,
            "hold.maintenance_html (a maintenance page)",
        ),
        (service.websocket_drain == "close", 'websocket_drain = "close"'),
        (service.balance == "least_time", 'balance = "least_time" (NGINX Plus; use least_conn)'),
    ]
    problems = [what for failed, what in checks if failed] + unsupported_sticky(service)
    return [f"services.{service.name}.{what}" for what in problems]
