"""Sticky sessions: a cookie that keeps a client on the instance that served it.

The cookie's value is a token, HMAC-SHA256(key, service NUL address) cut to
128 bits: opaque (no internal address leaks to the client) and signed in one
(without the key nobody can make the token of another target). A value that
names no target of the service in force (forged, of another service, of an
instance a deploy removed, made with an old key) is simply ignored: the
client is balanced as if it had none and gets a fresh cookie, never an error.

The key is shared by every worker and outlives restarts (control/dataplanes.py
keeps it in state_dir and hands it over in the settings), so a cookie set by
one worker is honoured by all, before and after a hot restart. The nginx
driver renders the same tokens into its map, so one scheme serves both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from zerodown.routing import StickySpec

if TYPE_CHECKING:
    from zerodown.proxy.http import Forwarded, RequestHead
    from zerodown.proxy.target import Target

KEY_BYTES: Final = 32
TOKEN_BYTES: Final = 16  # 128 bits: not guessable, short in a header
# Without a key from the settings (a proxy started by hand, a test), one per
# process: cookies then hold for this process's life only.
_PROCESS_KEY: Final = secrets.token_bytes(KEY_BYTES)


def new_key() -> str:
    """A fresh key, as hex (how settings and files carry it)."""
    return secrets.token_hex(KEY_BYTES)


def key_bytes(key: str) -> bytes:
    return bytes.fromhex(key) if key else _PROCESS_KEY


def token(key: bytes, service: str, address: str) -> str:
    """The cookie value that names `address` of `service`: opaque and signed."""
    mac = hmac.new(key, f"{service}\0{address}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:TOKEN_BYTES]).rstrip(b"=").decode()


def set_cookie(spec: StickySpec, value: str, *, secure: bool) -> str:
    """The Set-Cookie value binding a client to the target named by `value`.

    HttpOnly: scripts have no business with it; SameSite=Lax: a cross-site
    POST does not carry it (it only routes, but it need not travel there).
    """
    tail = "; Secure" if secure else ""
    max_age = math.ceil(spec.ttl)
    return f"{spec.cookie}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{tail}"


def came_over_tls(head: RequestHead, forwarded: Forwarded) -> bool:
    """Was the client's request on TLS: our listener's, or a trusted proxy says so."""
    if forwarded.proto == b"https":
        return True
    if not forwarded.trusted:
        return False  # anyone can send X-Forwarded-Proto; only a trusted hop is believed
    proto = head.header(b"x-forwarded-proto")
    return proto is not None and proto.strip().lower() == b"https"


def may_follow(target: Target, now: float) -> bool:
    """May a request whose cookie names `target` be sent there?

    Ready: while it may take requests at all (weight, health). Draining: only
    while it still answers and its drain allows it (`sticky_until`, set by the
    drain to leave time for the requests it lets in), so sticky clients never
    keep a drain from ending on time. Down or gone: never.
    """
    if target.state == "ready":
        return target.available
    if target.state == "draining":
        return target.health.serving and now < target.sticky_until
    return False


class StickyCookie:
    """One service's instance cookie: tokens of its targets, and the header to set."""

    __slots__ = ("_by_address", "_by_token", "name", "spec")

    def __init__(self, spec: StickySpec, key: bytes, service: str, targets: Iterable[Target]):
        self.spec = spec
        self.name = spec.cookie.encode()
        self._by_address: dict[str, str] = {}
        self._by_token: dict[bytes, Target] = {}
        for target in targets:
            value = token(key, service, target.address)
            self._by_address[target.address] = value
            self._by_token[value.encode()] = target

    def __repr__(self) -> str:
        return f"<StickyCookie {self.spec.cookie} targets={len(self._by_token)}>"

    def target(self, value: bytes | None) -> Target | None:
        """The target a cookie value names, or None (absent, forged, stale)."""
        if not value:
            return None
        return self._by_token.get(value)

    def header(self, target: Target, presented: bytes | None, secure: bool) -> bytes | None:
        """The Set-Cookie value for a request served by `target`, or None when
        the client's cookie already names it (no header on the common path)."""
        value = self._by_address.get(target.address)
        if value is None or (presented is not None and presented == value.encode()):
            return None
        return set_cookie(self.spec, value, secure=secure).encode()


def join_set_cookies(first: bytes | None, second: bytes | None) -> bytes | None:
    """Two Set-Cookie values as one: the response writes `Set-Cookie: <value>\\r\\n`.

    Set-Cookie is the one field that may not be folded into a list (RFC 6265
    §3), so the second gets a line of its own inside the value we write.
    """
    if first is None or second is None:
        return first or second
    return first + b"\r\nSet-Cookie: " + second
