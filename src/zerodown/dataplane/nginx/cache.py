"""`cache` on nginx: its own proxy_cache, rendered as text. Pure.

For each cached service the render adds at http level a `proxy_cache_path`
under the state dir (`cache/<service>`, nginx makes it) with `max_size`,
and in its location(s):

- `proxy_cache_key` with the service's release generation in it
  (cachespec.generation_tag): a deploy that changes the releases taking
  traffic renders another key, so after the reload nothing cached from the
  old release is found (it ages out of the zone as nginx evicts);
- a request with Authorization is passed to the app (`proxy_cache_bypass`)
  and its answer kept only when it says `public`, `s-maxage` or
  `must-revalidate` (`proxy_no_cache`), unless `authorized = true`;
- an answer whose Content-Length is over `max_object_size` is not kept
  (nginx has no such limit of its own: a regex on the length does it; a
  chunked answer of unknown length may be kept up to max_size);
- `X-Cache: HIT|MISS` from `$upstream_cache_status`, and the X-Request-ID
  header again: nginx inherits `add_header` only into a block with none.

nginx itself honours s-maxage/max-age/Expires, no-store/no-cache/private,
Vary (`*`: never) and Set-Cookie (never kept), and keeps nothing without an
explicit lifetime (no `proxy_cache_valid`). It keeps no `Age`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from zerodown.cachespec import generation_tag
from zerodown.routing import ServiceSpec

__all__ = ["CACHE_MAPS", "cache_http", "cache_location", "greater_than"]

# A key takes about 128 bytes of the keys zone; count one per 4 KiB cached.
_KEY_BYTES: Final = 128
_BYTES_PER_KEY: Final = 4096
_MIN_ZONE: Final = 1024 * 1024

CACHE_MAPS: Final = (
    "map $upstream_cache_status $zd_x_cache { HIT HIT; default MISS; }",
    # RFC 9111 §3.5: what lets a shared cache keep an answer to a request with Authorization.
    "map $upstream_http_cache_control $zd_cache_shared "
    '{ default 0; "~*(public|s-maxage|must-revalidate)" 1; }',
    'map "$http_authorization:$zd_cache_shared" $zd_cache_private { default 0; "~^.+:0$" 1; }',
)


def cache_http(services: Sequence[ServiceSpec], cache_dir: Path) -> list[str]:
    """The http-level lines: the maps once, a cache path and a size map per service."""
    cached = [s for s in services if s.cache is not None]
    if not cached:
        return []
    lines = list(CACHE_MAPS)
    for spec in cached:
        cache = spec.cache
        assert cache is not None
        zone = max(_MIN_ZONE, cache.max_size // _BYTES_PER_KEY * _KEY_BYTES)
        lines.append(
            f"proxy_cache_path {cache_dir / spec.name} levels=1:2 "
            f"keys_zone={_zone(spec.name)}:{zone} max_size={cache.max_size} "
            "inactive=1d use_temp_path=off;"
        )
        lines.append(
            f"map $upstream_http_content_length $zd_cache_large_{_ident(spec.name)} "
            f'{{ default 0; "~{greater_than(cache.max_object_size)}" 1; }}'
        )
    return lines


def cache_location(spec: ServiceSpec) -> list[str]:
    """The location's cache lines; none for a service without `cache`. The
    caller repeats its X-Request-ID add_header beside them."""
    cache = spec.cache
    if cache is None:
        return []
    no_cache = [f"$zd_cache_large_{_ident(spec.name)}"]
    lines = [
        f"proxy_cache {_zone(spec.name)};",
        f'proxy_cache_key "{generation_tag(spec)}|$scheme://$host$request_uri";',
    ]
    if not cache.authorized:
        lines.append("proxy_cache_bypass $http_authorization;")
        no_cache.append("$zd_cache_private")
    lines += [
        f"proxy_no_cache {' '.join(no_cache)};",
        "add_header X-Cache $zd_x_cache always;",
    ]
    return lines


def greater_than(limit: int) -> str:
    """A regex matching the decimal numbers above `limit` (no leading zeros):
    longer ones, or as long with a greater digit after an equal start."""
    digits = str(limit)
    width = len(digits)
    options = [f"[1-9][0-9]{{{width},}}"]
    for i, digit in enumerate(digits):
        if digit == "9":
            continue
        rest = width - i - 1
        higher = f"[{int(digit) + 1}-9]"
        options.append(digits[:i] + higher + (f"[0-9]{{{rest}}}" if rest else ""))
    return "^(" + "|".join(options) + ")$"


def _zone(service: str) -> str:
    return f"zd_cache_{_ident(service)}"


def _ident(name: str) -> str:
    # As guard.py's: '-' is not allowed in a variable, a checksum keeps "a-b" and "a_b" apart.
    return f"{name.replace('-', '_')}_{zlib.crc32(name.encode()):08x}"
