"""`cache` on HAProxy: its own cache section, rendered as text; the runtime
commands that move a cached service to a new release generation. Pure.

HAProxy 2.6 keys its cache by a hash of the Host header and the URI, taken
where `http-request cache-use` runs, and has no purge. So the backend puts
the service's release generation (cachespec.generation_tag) in front of
the Host just for that rule, and puts the Host back after it: the app sees
the request as sent. The generation comes from a map file the runtime API
changes (`set map`), so a deploy step needs no reload: once the map says
the new generation, nothing stored under the old one is found again (it
ages out as HAProxy evicts). While the servers change, the map holds a
generation used once only, so an answer stored mid-switch is never served
after it, whichever release gave it.

What HAProxy's cache does of its own (configuration.txt, 6.1): only 200
answers to GET; a request with Authorization is never answered from it
(as the embedded proxy's default; `cache.authorized` is refused at load),
though a `public` answer to one is kept for others, as RFC 9111 allows;
Vary only by Accept-Encoding and Referer (any other: not kept; 2.6 keeps
Referer variants but serves none of them); s-maxage/max-age/Expires capped
by `max-age` (MAX_AGE here); `Age` on hits. Answers with no lifetime of
their own (only a validator) or with Set-Cookie are not stored, as on the
embedded proxy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from zerodown.cachespec import generation_tag
from zerodown.routing import RoutingTable, ServiceSpec

__all__ = ["MAX_AGE", "cache_backend", "cache_map", "cache_name", "cache_sections", "switching"]

MAX_AGE: Final = 86400  # seconds: HAProxy keeps no object longer (its default is 60)
_MIB: Final = 1024 * 1024
_END: Final = "zd-end"  # an extension directive (RFC 9111 §5.2.3): ignored if ever seen


def cache_name(service: str) -> str:
    return f"zd_{service}"


def cache_sections(table: RoutingTable) -> list[str]:
    """One `cache` section per cached service (sizes in whole megabytes, rounded up)."""
    sections = []
    for spec in table.services:
        cache = spec.cache
        if cache is None:
            continue
        lines = [
            f"total-max-size {max(1, math.ceil(cache.max_size / _MIB))}",
            f"max-object-size {cache.max_object_size}",
            f"max-age {MAX_AGE}",
            "process-vary on",
        ]
        sections.append(f"cache {cache_name(spec.name)}\n" + "".join(f"    {x}\n" for x in lines))
    return sections


def cache_backend(spec: ServiceSpec, generations: Path) -> list[str]:
    """The backend's rules for `spec.cache`; none without one."""
    if spec.cache is None:
        return []
    name = cache_name(spec.name)
    has_host = "if { var(txn.zd_host) -m found }"
    # Kept only with a lifetime of its own (no heuristic from a validator)
    # and never with a cookie for one client.
    # (HAProxy has no parentheses: AND binds before OR.)
    no_cookie = "!{ res.hdr(set-cookie) -m found }"
    storable = (
        f"if {{ res.hdr(cache-control) -m reg -i ^(s-)?max-age= }} {no_cookie} "
        f"|| {{ res.hdr(expires) -m found }} {no_cookie}"
    )
    return [
        "http-request set-var(txn.zd_host) req.hdr(host)",
        f"http-request set-header Host %[str({spec.name}),map({generations})]|%[var(txn.zd_host)] "
        + has_host,
        f"http-request cache-use {name}",
        f"http-request set-header Host %[var(txn.zd_host)] {has_host}",
        # HAProxy 2.6 reads two bytes past a max-age/s-maxage value: digits
        # there (the next field's) make max-age=1 last 11 s. A last element
        # that is not a number ends each value; it is taken off again.
        f"http-response replace-header Cache-Control ^(.*)$ '\\1, {_END}'",
        f"http-response cache-store {name} {storable}",
        f"http-response replace-header Cache-Control '^(.*), {_END}$' '\\1'",
        f"http-after-response replace-header Cache-Control '^(.*), {_END}$' '\\1' "
        "if { res.cache_hit }",
        "http-after-response set-header X-Cache HIT if { res.cache_hit }",
        "http-after-response set-header X-Cache MISS unless { res.cache_hit }",
    ]


def cache_map(table: RoutingTable) -> str:
    """The map file: each cached service's generation, as the table has it."""
    return "".join(f"{s.name} {generation_tag(s)}\n" for s in table.services if s.cache)


def switching(
    old: RoutingTable, new: RoutingTable, generations: Path, commands: Sequence[str], once: str
) -> tuple[str, ...]:
    """`commands` (a deploy step's server changes) with the map moves around
    them: each cached service whose generation changes is set to a
    generation used only during the switch (`once`, fresh per call), then
    to its new one."""
    before, after = [], []
    for spec in new.services:
        was = old.service(spec.name)
        if spec.cache is None or was is None or was.cache is None:
            continue  # a cache added or removed is a reload: the map file says it
        tag = generation_tag(spec)
        if tag != generation_tag(was):
            before.append(f"set map {generations} {spec.name} {tag}-{once}")
            after.append(f"set map {generations} {spec.name} {tag}")
    return (*before, *commands, *after)
