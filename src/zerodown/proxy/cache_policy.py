"""What a shared cache may store and serve, by RFC 9111. Pure: no I/O, no clock.

The proxy stores a response only when the response itself says for how
long (`s-maxage`, `max-age`, `Expires`): there is no heuristic freshness,
so an app that says nothing is never cached. It never revalidates: a
stored response is served while fresh and forgotten after, so `no-cache`
(store, but ask the origin each time) is treated as `no-store`. The
request's own Cache-Control is not obeyed (as nginx and HAProxy do not):
one client's reload must not be a way to empty the cache for everyone.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from zerodown.proxy.http import RequestHead

__all__ = [
    "CACHEABLE_STATUSES",
    "Storable",
    "cacheable_request",
    "directives",
    "may_look_up",
    "not_modified",
    "secondary_key",
    "storable",
]

# RFC 9110 §15.1: statuses "heuristically cacheable", the ones a cache knows
# to be final answers; with explicit freshness only, as said above.
CACHEABLE_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# §3.5: these let a shared cache keep a response to a request with Authorization.
_SHARED_OK: Final = (b"public", b"s-maxage", b"must-revalidate")
_NEVER: Final = (b"no-store", b"private", b"no-cache")


@dataclass(frozen=True, slots=True)
class Storable:
    """A response the cache may keep: for `lifetime` seconds from when the
    origin made it, `initial_age` seconds ago (its Age), one variant per
    value of the request fields named by `vary` (lower case)."""

    lifetime: float
    initial_age: float
    vary: tuple[bytes, ...]


def cacheable_request(head: RequestHead) -> bool:
    """Is this a request the cache takes part in at all (a GET or HEAD, no
    body, no protocol switch)?"""
    return head.method in (b"GET", b"HEAD") and not head.has_body and head.upgrade is None


def may_look_up(head: RequestHead, authorized: bool) -> bool:
    """May a cacheable request be answered from the cache? Not with
    Authorization, unless the service allows it: what a user asks with
    credentials goes to the app (its answer may still be kept: `storable`)."""
    return authorized or head.header(b"authorization") is None


def directives(values: Iterable[bytes]) -> dict[bytes, bytes | None]:
    """Cache-Control directives by lower-case name (RFC 9111 §5.2), quotes removed."""
    found: dict[bytes, bytes | None] = {}
    for value in values:
        for part in value.split(b","):
            name, eq, argument = part.strip().partition(b"=")
            if name:
                found.setdefault(name.strip().lower(), argument.strip().strip(b'"') if eq else None)
    return found


def storable(
    status: int,
    headers: list[tuple[bytes, bytes]],
    names: list[bytes],
    *,
    with_authorization: bool,
    authorized: bool,
    now: float,
) -> Storable | None:
    """How the response may be kept (None: not at all). `names` are the
    header names in lower case; `now` is the wall clock (for Expires)."""
    if status not in CACHEABLE_STATUSES:
        return None
    fields = _fields(headers, names)
    control = directives(fields.get(b"cache-control", []))
    if any(d in control for d in _NEVER) or b"set-cookie" in fields:
        return None  # one client's cookie must never reach another
    if with_authorization and not authorized and not any(d in control for d in _SHARED_OK):
        return None
    vary = _vary(fields.get(b"vary", []))
    lifetime = _lifetime(control, fields, now)
    if vary is None or lifetime is None or lifetime <= 0:
        return None
    age = _seconds(fields.get(b"age", (b"0",))[0]) or 0
    return Storable(float(lifetime), float(age), vary) if age < lifetime else None


def not_modified(head: RequestHead, stored: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Does the client hold the stored response already (RFC 9110 §13.1)?

    If-None-Match by weak comparison (`*` matches any); without it,
    If-Modified-Since against the stored Last-Modified.
    """
    fields = {name.lower(): value for name, value in stored}
    match = head.header(b"if-none-match")
    if match is not None:
        etag = fields.get(b"etag")
        if etag is None:
            return False
        tags = {_weak(tag) for tag in match.split(b",")}
        return b"*" in tags or _weak(etag) in tags
    since = head.header(b"if-modified-since")
    modified = fields.get(b"last-modified")
    if since is None or modified is None:
        return False
    since_at, modified_at = _date(since), _date(modified)
    return since_at is not None and modified_at is not None and modified_at <= since_at


def _weak(tag: bytes) -> bytes:
    return tag.strip().removeprefix(b"W/")


def secondary_key(head: RequestHead, vary: tuple[bytes, ...]) -> tuple[bytes | None, ...]:
    """The request's values of the fields a response varies by (§4.1),
    with the spaces after commas ignored, as the RFC allows."""
    return tuple(_normalized(head.header(name)) for name in vary)


def _normalized(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    return b",".join(part.strip() for part in value.split(b","))


def _fields(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for (_, value), name in zip(headers, names, strict=True):
        fields.setdefault(name, []).append(value)
    return fields


def _vary(values: list[bytes]) -> tuple[bytes, ...] | None:
    """The fields named by Vary, sorted and lower case; None for `*` (never stored)."""
    names = {n.strip().lower() for value in values for n in value.split(b",") if n.strip()}
    return None if b"*" in names else tuple(sorted(names))


def _lifetime(
    control: dict[bytes, bytes | None], fields: dict[bytes, list[bytes]], now: float
) -> float | None:
    """§4.2.1: s-maxage first (a shared cache), then max-age, then Expires."""
    for name in (b"s-maxage", b"max-age"):
        if name in control:
            return _seconds(control[name])  # a bad value: not stored, not a guess
    expires = fields.get(b"expires")
    if not expires:
        return None
    until = _date(expires[0])
    if until is None:
        return 0.0  # an invalid date means already expired (§5.3)
    date = _date(fields[b"date"][0]) if b"date" in fields else None
    return until - (date if date is not None else now)


def _seconds(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


def _date(value: bytes) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
