"""A service's cache at run time: the lookup before a target is chosen, and
the store while the response is relayed (RFC 9111 rules: cache_policy.py).

One hook in the exchange: `from_cache` answers a hit in full (the exchange
is then done) or puts a CacheFill in place of the exchange's ResponseStream,
which adds `X-Cache: MISS`, forwards as ever, and keeps a copy of a storable
response until it ends or passes `max_object_size`, whichever comes first: a
larger body streams on with nothing of it held. A service without `cache`
has no ServiceCache: its requests pay one `is None`.

The store is per worker process (a hit in one worker is a miss in another).
It belongs to one release generation (cachespec.generation): a table that
changes the releases taking traffic purges it, and a response still in
flight from before is dropped rather than stored.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from zerodown.cachespec import CacheSpec, generation
from zerodown.proxy import http
from zerodown.proxy.cache import CacheStore, Entry
from zerodown.proxy.cache_policy import (
    Storable,
    cacheable_request,
    may_look_up,
    not_modified,
    secondary_key,
    storable,
)
from zerodown.proxy.phase import Phase, advance
from zerodown.proxy.response import Framing, ResponseStream

if TYPE_CHECKING:
    from zerodown.proxy.exchange import Exchange
    from zerodown.routing import ServiceSpec

__all__ = ["CacheFill", "ServiceCache", "cache_counts", "carried_over", "from_cache"]

X_CACHE_HIT: Final = (b"X-Cache", b"HIT")
X_CACHE_MISS: Final = b"X-Cache: MISS\r\n"
# Not kept with a stored response: hop-by-hop fields, the framing (a hit
# sets its own Content-Length), the Age it had (a hit sets the one it has
# now), and what the proxy adds to each response itself.
_NOT_STORED: Final = http.HOP_BY_HOP | {b"content-length", b"age", b"x-request-id", b"x-cache"}
_NO_BODY: Final = frozenset({204, 304})
_NOT_MODIFIED_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)


class ServiceCache:
    """The store of one service and the generation it belongs to."""

    __slots__ = ("generation", "hits", "misses", "spec", "store")

    def __init__(self, spec: CacheSpec, releases: tuple[str, ...]) -> None:
        self.spec = spec
        self.generation = releases
        self.store = CacheStore(spec.max_size)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"<ServiceCache {self.generation} {self.store!r} hits={self.hits}>"


def carried_over(spec: ServiceSpec, previous: ServiceCache | None) -> ServiceCache | None:
    """The cache of a service rebuilt from `spec`: the previous one while the
    generation and the settings hold, else a new one (the old one purged)
    that counts on from the old one's hits and misses: they are counters
    (stats.ServiceStats), and a deploy must not send them back to 0."""
    releases = generation(spec) if spec.cache is not None else ()
    if previous is not None:
        if previous.spec == spec.cache and previous.generation == releases:
            return previous
        previous.store.clear()
    if spec.cache is None:
        return None
    cache = ServiceCache(spec.cache, releases)
    if previous is not None:
        cache.hits, cache.misses = previous.hits, previous.misses
    return cache


def cache_counts(cache: ServiceCache | None) -> dict[str, int]:
    """A service's cache hits and misses, as stats.ServiceStats names them."""
    if cache is None:
        return {"cache_hits": 0, "cache_misses": 0}
    return {"cache_hits": cache.hits, "cache_misses": cache.misses}


def from_cache(exchange: Exchange, cache: ServiceCache) -> bool:
    """Answer `exchange` from the cache (True: it is done), or set it up to
    fill the cache with the response to come."""
    head = exchange.head
    primary = None
    if cacheable_request(head):
        primary = head.host.lower() + b" " + head.url
    if primary is not None and may_look_up(head, cache.spec.authorized):
        now = exchange.loop.time()
        vary = cache.store.vary(primary)
        entry = None if vary is None else cache.store.get(primary, secondary_key(head, vary), now)
        if entry is not None:
            cache.hits += 1
            _answer(exchange, entry, now)
            return True
    cache.misses += 1
    kept = primary if head.method == b"GET" else None  # a HEAD's answer has no body to keep
    exchange.response = CacheFill(exchange, cache, kept)
    return False


def _answer(exchange: Exchange, entry: Entry, now: float) -> None:
    head = exchange.head
    status, reason, kept = entry.status, entry.reason, entry.headers
    if status == 200 and not_modified(head, kept):
        # The client's copy is current: the head a 304 carries (RFC 9110 §15.4.5).
        status, reason = 304, b"Not Modified"
        kept = tuple((n, v) for n, v in kept if n.lower() in _NOT_MODIFIED_FIELDS)
    exchange.status = status
    exchange.keep_alive = exchange.keep_alive and exchange.client.keep_alive_allowed(exchange)
    framing = b"" if status in _NO_BODY else b"Content-Length: %d\r\n" % len(entry.body)
    headers = [*kept, (b"Age", b"%d" % entry.age(now)), X_CACHE_HIT]
    parts = http.response_head(
        status,
        reason,
        headers,
        version=head.version,
        framing=framing,
        keep_alive=exchange.keep_alive,
        request_id=exchange.request_id,
    )
    if head.method != b"HEAD" and status not in _NO_BODY and entry.body:
        parts.append(entry.body)
    exchange.phase = advance(exchange.phase, Phase.DONE)
    exchange.client.write_lines(parts)


class CacheFill(ResponseStream):
    """The response stream of an exchange of a cached service that missed."""

    __slots__ = (
        "_body",
        "_born",
        "_cache",
        "_head",
        "_kept",
        "_loop",
        "_primary",
        "_reason",
        "_rule",
        "_size",
        "_status",
    )

    def __init__(self, exchange: Exchange, cache: ServiceCache, primary: bytes | None) -> None:
        super().__init__(exchange.client)
        self._cache = cache
        self._head = exchange.head
        self._loop = exchange.loop
        self._primary = primary  # None: nothing of this response is kept
        self._rule: Storable | None = None
        self._status = 0
        self._reason = b""
        self._born = 0.0
        self._kept: tuple[tuple[bytes, bytes], ...] = ()
        self._body: list[bytes] = []
        self._size = 0

    def head(
        self,
        parts: list[bytes],
        framing_: Framing,
        upstream_keep_alive: bool,
        status: int = 0,
        reason: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        names: list[bytes] | None = None,
    ) -> None:
        parts.insert(len(parts) - 1, X_CACHE_MISS)  # before the blank line that ends the head
        super().head(parts, framing_, upstream_keep_alive)
        if self._primary is not None and headers is not None and names is not None:
            self._start(status, reason, headers, names)

    def _start(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], names: list[bytes]
    ) -> None:
        spec = self._cache.spec
        with_authorization = self._head.header(b"authorization") is not None
        rule = storable(
            status,
            headers,
            names,
            with_authorization=with_authorization,
            authorized=spec.authorized,
            now=time.time(),
        )
        if rule is None or _declared_length(headers, names) > spec.max_object_size:
            return  # known too large before the first byte: nothing is copied
        self._rule = rule
        self._status = status
        self._reason = reason
        self._born = self._loop.time() - rule.initial_age
        self._kept = tuple(
            (name, value)
            for (name, value), key in zip(headers, names, strict=True)
            if key not in _NOT_STORED
        )

    def body(self, data: bytes) -> None:
        super().body(data)
        if self._rule is None:
            return
        self._size += len(data)
        if self._size > self._cache.spec.max_object_size:
            self._rule, self._body = None, []  # too large: the rest only streams through
        else:
            self._body.append(data)

    def end(self) -> None:
        super().end()
        rule, self._rule = self._rule, None
        if rule is None:
            return
        entry = Entry(
            status=self._status,
            reason=self._reason,
            headers=self._kept,
            body=b"".join(self._body),
            vary=rule.vary,
            born=self._born,
            lifetime=rule.lifetime,
        )
        self._body = []
        assert self._primary is not None
        self._cache.store.put(self._primary, secondary_key(self._head, rule.vary), entry)


def _declared_length(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> int:
    """The response's Content-Length, 0 when it has none (chunked, or to the close)."""
    for (_, value), name in zip(headers, names, strict=True):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0
