"""`sticky` on open-source nginx, which has no `sticky` directive: pure text.

For a sticky service the render adds, beside its upstream `zd_<svc>`:

- one small upstream per target that may keep its clients (`zd_<svc>.<n>`:
  ready and healthy, or draining: a draining target stays until the table
  drops it), the target as its server and the service's other live targets
  as `backup`, so a bound target that fails to connect is retried elsewhere
  instead of a 502;
- `map $cookie_<name> $zd_<svc>_upstream`: the cookie's token -> that
  upstream, anything else (none, forged, stale) -> `zd_<svc>`, which
  balances; the location proxies to `http://$zd_<svc>_upstream`;
- `map $upstream_addr $zd_<svc>_served`: the target that answered (the last
  of the tries) -> its token, and from it and the cookie the Set-Cookie to
  add: none when the client's cookie already names it.

Tokens are the embedded proxy's (proxy/sticky.py: HMAC of the key, service
and address), so they are opaque and signed, and a cookie made here holds
after a switch of the data plane between embedded and nginx too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from zerodown.dataplane.nginx.settings import KEEPALIVE_REQUESTS
from zerodown.proxy.sticky import token
from zerodown.routing import ServiceSpec, TargetSpec, parse_address

# $cookie_NAME takes a variable name: letters, digits and "_" only.
_VARIABLE_NAME = re.compile(r"[A-Za-z0-9_]+")
# What may be a PCRE literal as is; anything else is escaped.
_LITERAL = re.compile(r"[A-Za-z0-9_:-]")

SECURE_MAP = (
    # `; Secure` when the client came over TLS: our listener's, or a trusted
    # proxy's X-Forwarded-Proto ($zd_trusted is the geo of render.py).
    'map "$zd_trusted:$http_x_forwarded_proto:$scheme" $zd_sticky_secure '
    '{ default ""; "~^1:https:" "; Secure"; "~:https$" "; Secure"; }'
)


def unsupported_sticky(service: ServiceSpec) -> list[str]:
    sticky = service.sticky
    if sticky is None or _VARIABLE_NAME.fullmatch(sticky.cookie):
        return []
    return ["sticky.cookie (nginx reads a cookie by name: letters, digits and '_' only)"]


def bound_targets(service: ServiceSpec, unhealthy: frozenset[str]) -> list[TargetSpec]:
    """The targets a cookie may still lead to: ready and healthy, or draining."""
    return [
        t
        for t in (*service.stable.targets, *service.canary.targets)
        if (t.state == "ready" and t.weight > 0 and t.address not in unhealthy)
        or t.state == "draining"
    ]


def sticky_blocks(
    service: ServiceSpec, unhealthy: frozenset[str], key: bytes, keepalive: int
) -> list[str]:
    """The per-target upstreams and the maps of one sticky service."""
    sticky = service.sticky
    assert sticky is not None
    bound = bound_targets(service, unhealthy)
    live = [t for t in bound if t.state == "ready"]
    name, cookie = service.name, sticky.cookie
    tokens = {t.address: token(key, name, t.address) for t in bound}
    blocks = [
        _target_upstream(name, i, t, [b for b in live if b is not t], keepalive)
        for i, t in enumerate(bound)
    ]
    routes = [f"{tokens[t.address]} {target_upstream(name, i)};" for i, t in enumerate(bound)]
    blocks.append(_map(f"$cookie_{cookie}", f"$zd_{_var(name)}_upstream", f"zd_{name}", routes))
    served = [f'"~(^|, ){_regex(_address(a))}$" {value};' for a, value in tokens.items()]
    blocks.append(_map("$upstream_addr", f"$zd_{_var(name)}_served", '""', served))
    max_age = math.ceil(sticky.ttl)
    set_cookie = (
        f'"{cookie}=$zd_{_var(name)}_served; Max-Age={max_age}; Path=/; HttpOnly; '
        'SameSite=Lax$zd_sticky_secure"'
    )
    same = ['"~^([^:]*):\\1$" "";', '"~:$" "";']  # already named; nothing served (503)
    blocks.append(
        _map(
            f'"$cookie_{cookie}:$zd_{_var(name)}_served"',
            f"$zd_{_var(name)}_set_cookie",
            set_cookie,
            same,
        )
    )
    return blocks


def location_lines(service: ServiceSpec, request_id_header: str) -> list[str]:
    """proxy_pass by the cookie, and the cookie to set; `request_id_header` is
    the http-level add_header, repeated here: nginx inherits add_header only
    into a level that has none of its own."""
    name = _var(service.name)
    return [
        f"proxy_pass http://$zd_{name}_upstream;",
        f"add_header Set-Cookie $zd_{name}_set_cookie;",
        request_id_header,
    ]


def target_upstream(service: str, index: int) -> str:
    # "." cannot be in a service name, so the access log finds the service
    # before it (accesslog.py).
    return f"zd_{service}.{index}"


def _target_upstream(
    service: str, index: int, target: TargetSpec, backups: Iterable[TargetSpec], keepalive: int
) -> str:
    lines = [f"server {_address(target.address)} max_fails=0;"]
    lines += [f"server {_address(b.address)} max_fails=0 backup;" for b in backups]
    lines += [f"keepalive {keepalive};", f"keepalive_requests {KEEPALIVE_REQUESTS};"]
    body = "\n".join(f"    {line}" for line in lines)
    return f"upstream {target_upstream(service, index)} {{\n{body}\n}}"


def _map(source: str, variable: str, default: str, entries: list[str]) -> str:
    body = "\n".join(f"    {line}" for line in [f"default {default};", *entries])
    return f"map {source} {variable} {{\n{body}\n}}"


def _var(service: str) -> str:
    # Injective: "a-b" and "a_b" are two services, two variables.
    return service.replace("_", "_5f").replace("-", "_2d")


def _address(address: str) -> str:
    host, port = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _regex(text: str) -> str:
    return "".join(c if _LITERAL.fullmatch(c) else "\\" + c for c in text)
