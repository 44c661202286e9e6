"""A service's edge rules (guardspec.py) as nginx configuration. Pure.

- The client: with `trusted_proxies`, the realip module takes it from
  X-Forwarded-For, walking from the right past trusted hops
  (`real_ip_recursive on`), as the embedded proxy does; `$remote_addr` is
  then the client everywhere (these rules, `ip_hash`), and
  `$realip_remote_addr` the peer (render.py: who may forward for others).
- allow/deny: a `geo` per service mapping each network to the rule that
  refuses it; geo picks the most specific network, so an allowed network
  inside a denied one is rendered as denied (deny wins, as embedded). A
  geo rather than `allow`/`deny` directives so the 403 names the rule.
- block: a `map` per kind (method, `$uri`: decoded, no query; User-Agent).
- rate_limit: `limit_req` with `burst = requests + burst - 1` (none at 0) and `nodelay`,
  nginx's leaky bucket that is exactly the token bucket of embedded; its
  429 goes to a named location adding Retry-After. nginx's rate is whole
  requests per second or per minute: another rate is rounded to the
  nearest per minute. The zone is shared by nginx's workers and drops its
  least recently used keys when full.

Each refusal sets `$zd_refused`, `$zd_rule` and `$zd_svc`, which the access
log carries (render.LOG_FORMAT) to the driver's counters, with
`$zd_refused_client`: the client of a refused request, empty for any other
(so the log's lines still repeat: accesslog.py counts distinct lines).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Sequence
from typing import Final

from zerodown.guardspec import GuardSpec, RateLimitSpec, rate_key_header
from zerodown.routing import ServiceSpec

__all__ = ["LOG_VARIABLES", "guard_http", "guard_location", "guard_named", "rate", "realip"]

ZONE_SIZE: Final = "4m"  # ~32k keys of a client address
_ADVICE: Final = {
    "denied": "this service does not accept requests from your address",
    "blocked": "this request matches a rule that blocks it; it was not sent on",
    "rate_limited": "too many requests; retry after the number of seconds in Retry-After",
}
_REASONS: Final = {403: "Forbidden", 429: "Too Many Requests"}
# Defined for every request, so the log format may name them; set on a refusal.
LOG_VARIABLES: Final = ("zd_refused", "zd_rule", "zd_svc")


def realip(trusted: Sequence[str]) -> list[str]:
    if not trusted:
        return []
    return [
        *(f"set_real_ip_from {cidr};" for cidr in trusted),
        "real_ip_header X-Forwarded-For;",
        "real_ip_recursive on;",
    ]


def guard_http(services: Sequence[ServiceSpec]) -> list[str]:
    """http-level lines: the log's variables, and each guarded service's maps and zone."""
    lines = [f"geo ${name} {{ default ''; }}" for name in (*LOG_VARIABLES, "zd_count")]
    lines.append("map $zd_refused $zd_refused_client { default $remote_addr; '' ''; }")
    lines.append('geo $zd_dollar { default "$"; }')  # a literal $ in a script (no escape exists)
    for spec in services:
        guard = _guard(spec)
        if guard is not None:
            lines += _maps(spec.name, guard)
    return lines


def guard_location(spec: ServiceSpec) -> list[str]:
    """The location's checks, first in it: ifs for allow/deny and block, then limit_req."""
    guard = _guard(spec)
    if guard is None:
        return []
    v = _ident(spec.name)
    checks = []
    if guard.allow or guard.deny:
        checks.append(("denied", f"zd_access_{v}"))
    if guard.block is not None:
        checks += [("blocked", f"zd_b{kind}_{v}") for kind in _block_kinds(guard)]
    lines = [_refusal_if(spec.name, kind, variable) for kind, variable in checks]
    limit = guard.rate_limit
    if limit is not None:
        # nginx refuses `burst=0` (one request at once): no burst is that.
        burst = f" burst={limit.capacity - 1}" if limit.capacity > 1 else ""
        lines += [
            f"limit_req zone=zd_rl_{v}{burst} nodelay;",
            "limit_req_status 429;",
            f"error_page 429 @zd_rl_{v};",
        ]
    return lines


def guard_named(services: Sequence[ServiceSpec]) -> list[str]:
    """Server-level named locations: each rate-limited service's 429 with Retry-After."""
    named = []
    for spec in services:
        guard = _guard(spec)
        if guard is None or guard.rate_limit is None:
            continue
        limit = guard.rate_limit
        rule = _rate_rule(limit)
        body = [
            *_marks(spec.name, "rate_limited", _script(rule)),
            f"add_header Retry-After {limit.retry_after} always;",
            "add_header X-Zerodown-Error rate_limited always;",
            "add_header X-Request-ID $zd_request_id always;",
            f'return 429 "{_body(429, _script(rule), "rate_limited")}";',
        ]
        inner = "\n".join(f"    {line}" for line in body)
        named.append(f"location @zd_rl_{_ident(spec.name)} {{\n{inner}\n}}")
    return named


def rate(limit: RateLimitSpec) -> str:
    """nginx's `rate=`: whole requests per second, else rounded per minute (at least 1)."""
    per_second = limit.rate
    if per_second >= 1 and per_second == int(per_second):
        return f"{int(per_second)}r/s"
    return f"{max(1, round(per_second * 60))}r/m"


# -- the pieces -----------------------------------------------------------------------


def _guard(spec: ServiceSpec) -> GuardSpec | None:
    guard = spec.guard
    return None if guard is None or guard.empty else guard


def _ident(name: str) -> str:
    """A variable-safe name for a service: '-' is not allowed, and a checksum
    keeps "a-b" and "a_b" apart."""
    return f"{name.replace('-', '_')}_{zlib.crc32(name.encode()):08x}"


def _block_kinds(guard: GuardSpec) -> list[str]:
    block = guard.block
    if block is None:
        return []
    kinds = [("m", block.methods), ("p", block.paths), ("ua", block.user_agents)]
    return [kind for kind, items in kinds if items]


def _maps(name: str, guard: GuardSpec) -> list[str]:
    v = _ident(name)
    lines = []
    if guard.allow or guard.deny:
        lines.append(_access_geo(v, guard))
    block = guard.block
    if block is not None:
        sources = {"m": "$request_method", "p": "$uri", "ua": "$http_user_agent"}
        for kind in _block_kinds(guard):
            entries = _block_entries(kind, guard)
            lines.append(_map(sources[kind], f"zd_b{kind}_{v}", entries))
    if guard.rate_limit is not None:
        lines += _zone(v, guard.rate_limit)
    return lines


def _access_geo(v: str, guard: GuardSpec) -> str:
    default = f"allow (not in {', '.join(guard.allow)})" if guard.allow else ""
    entries = {net: f"deny {net}" for net in guard.deny}
    for net in guard.allow:
        # An allowed network inside a denied one stays denied: deny wins.
        entries.setdefault(net, _covering_deny(net, guard.deny) or "")
    body = " ".join(f"{net} {_quoted(value)};" for net, value in entries.items())
    return f"geo $zd_access_{v} {{ default {_quoted(default)}; {body} }}"


def _covering_deny(net: str, deny: Sequence[str]) -> str | None:
    inner = ipaddress.ip_network(net)
    for candidate in deny:
        outer = ipaddress.ip_network(candidate)
        if inner.version == outer.version and inner.subnet_of(outer):  # type: ignore[arg-type]
            return f"deny {outer}"
    return None


def _block_entries(kind: str, guard: GuardSpec) -> list[tuple[str, str]]:
    block = guard.block
    assert block is not None
    if kind == "m":
        return [(method, f"block.methods {method}") for method in block.methods]
    if kind == "p":
        return [(f"~{p}", f"block.paths {p}") for p in block.paths]
    return [(f"~*{p}", f"block.user_agents {p}") for p in block.user_agents]


def _map(source: str, variable: str, entries: list[tuple[str, str]]) -> str:
    body = " ".join(f'{_quoted(key)} "{_script(value)}";' for key, value in entries)
    return f"map {source} ${variable} {{ default ''; {body} }}"


def _zone(v: str, limit: RateLimitSpec) -> list[str]:
    header = rate_key_header(limit)
    if header is None:
        key = "$binary_remote_addr"
        lines = []
    else:
        # Without the header a client is keyed by its address (as embedded).
        source = "$http_" + header.replace("-", "_")
        key = f"$zd_rk_{v}"
        lines = [f"map {source} {key} {{ '' 'ip:$remote_addr'; default 'h:{source}'; }}"]
    return [*lines, f"limit_req_zone {key} zone=zd_rl_{v}:{ZONE_SIZE} rate={rate(limit)};"]


def _rate_rule(limit: RateLimitSpec) -> str:
    header = rate_key_header(limit)
    what = f"header {header}" if header else "address"
    return f"rate_limit ({limit.capacity} at once, {limit.rate:g}/s per {what})"


def _marks(service: str, kind: str, rule_script: str) -> list[str]:
    return [
        f"set $zd_refused {kind};",
        f'set $zd_rule "{rule_script}";',
        f"set $zd_svc {_quoted(service)};",
        # A refusal is always logged: where the Lua balancer decides which
        # requests are (upstreams.COUNTED_LOG), this says so at no cost.
        "set $zd_count 1;",
    ]


def _refusal_if(service: str, kind: str, variable: str) -> str:
    body = [
        *_marks(service, kind, f"${variable}"),
        f"add_header X-Zerodown-Error {kind} always;",
        "add_header X-Request-ID $zd_request_id always;",
        f'return 403 "{_body(403, f"${variable}", kind)}";',
    ]
    inner = "\n".join(f"    {line}" for line in body)
    return f"if (${variable}) {{\n{inner}\n}}"


def _body(status: int, rule_script: str, kind: str) -> str:
    return f"{status} {_REASONS[status]}: {rule_script}\\n{_ADVICE[kind]}\\n"


def _script(text: str) -> str:
    """`text` inside a double-quoted nginx script: quoted, and each $ a variable."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return escaped.replace("$", "${zd_dollar}")


def _quoted(text: str) -> str:
    """A double-quoted nginx word holding `text` literally (no variables in it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
