"""A service's edge rules at run time: one check before anything reaches the app.

Built from the routing table's GuardSpec (guardspec.py) whenever the table
changes; the counters carry over, as the retry budget does, so a swap never
resets them. The check runs in this order: who the client is (access.py),
what it asks (filtering.py), how fast it asks (ratelimit.py), so a request
refused for its address or its path takes no token. A service without
these keys has no Guard at all: its requests pay one `is None`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from zerodown.errors import ProxyError
from zerodown.guardspec import GuardSpec, rate_key_header
from zerodown.proxy import http
from zerodown.proxy.access import AccessList
from zerodown.proxy.filtering import BlockRules
from zerodown.proxy.ratelimit import BucketTable

__all__ = ["Guard", "GuardCounters", "Refusal"]

Clock = Callable[[], float]

# What the client is told to do, by kind of refusal: the body's second line.
_ADVICE: Final = {
    "denied": "this service does not accept requests from your address",
    "blocked": "this request matches a rule that blocks it; it was not sent on",
    "rate_limited": "too many requests; retry after the number of seconds in Retry-After",
}


class Refusal(ProxyError):
    """A request the service's rules refuse (403 or 429); `rule` says which."""

    def __init__(self, kind: str, rule: str, status: int = 403, retry_after: int = 0) -> None:
        super().__init__(rule)
        self.kind = kind
        self.rule = rule
        self.status = status
        self.retry_after = retry_after

    def response(self, request_id: bytes, *, close: bool, head_only: bool) -> bytes:
        body = b"%d %s: %s\n%s\n" % (
            self.status,
            http.REASONS.get(self.status, b"Error"),
            http.one_line(self.rule),
            _ADVICE[self.kind].encode(),
        )
        extra = b"Content-Type: text/plain\r\n"
        if self.retry_after:
            extra += b"Retry-After: %d\r\n" % self.retry_after
        return http.error_response(
            self.status,
            request_id=request_id,
            close=close,
            extra=extra,
            body=body,
            head_only=head_only,
            kind=self.kind.encode(),
        )


class GuardCounters:
    """Requests one service refused, by kind (stats.ServiceStats)."""

    __slots__ = ("blocked", "denied", "rate_limited")

    def __init__(self) -> None:
        self.denied = 0
        self.blocked = 0
        self.rate_limited = 0

    def __repr__(self) -> str:
        return f"<GuardCounters {self.as_dict()}>"

    def as_dict(self) -> dict[str, int]:
        return {"denied": self.denied, "blocked": self.blocked, "rate_limited": self.rate_limited}


class Guard:
    __slots__ = (
        "_access",
        "_block",
        "_capacity",
        "_clock",
        "_header",
        "_prefix",
        "_rate",
        "_retry_after",
        "_table",
        "counters",
    )

    def __init__(
        self,
        service: str,
        spec: GuardSpec,
        counters: GuardCounters,
        table: BucketTable | None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.counters = counters
        access = AccessList(spec.allow, spec.deny)
        self._access = None if access.empty else access
        self._block = BlockRules(spec.block) if spec.block is not None else None
        limit = spec.rate_limit
        self._table = table if limit is not None else None
        if limit is not None and table is None:
            raise ValueError(f"service {service} has a rate limit but no bucket table")
        self._rate = limit.rate if limit else 0.0
        self._capacity = limit.capacity if limit else 0
        self._retry_after = limit.retry_after if limit else 0
        self._header = rate_key_header(limit) if limit else None
        self._prefix = service.encode() + b"\0"  # one service's keys never meet another's
        self._clock = clock

    def __repr__(self) -> str:
        return f"<Guard {self._access!r} {self._block!r} rate={self._rate}/s>"

    def check(self, client_ip: str, head: http.RequestHead, path: bytes) -> Refusal | None:
        """The refusal of this request, counted; None when it may go on to the app."""
        if self._access is not None:
            rule = self._access.refusal(client_ip)
            if rule is not None:
                self.counters.denied += 1
                return Refusal("denied", rule)
        if self._block is not None:
            url = head.url if head.url[:1] == b"/" else path
            rule = self._block.refusal(head.method, url, head.header(b"user-agent"))
            if rule is not None:
                self.counters.blocked += 1
                return Refusal("blocked", rule)
        if self._table is not None:
            return self._limit(client_ip, head)
        return None

    def _limit(self, client_ip: str, head: http.RequestHead) -> Refusal | None:
        assert self._table is not None
        value = head.header(self._header.encode()) if self._header is not None else None
        # Without the header a client is keyed by its address: leaving the
        # header out must not be a way around the limit.
        key = b"h:" + value if value is not None else b"ip:" + client_ip.encode()
        wait = self._table.take(self._prefix + key, self._clock(), self._rate, self._capacity)
        if not wait:
            return None
        self.counters.rate_limited += 1
        retry_after = max(1, math.ceil(wait))
        what = f"header {self._header}" if value is not None else "address"
        rule = f"rate_limit ({self._capacity} at once, {self._rate:g}/s per {what})"
        return Refusal("rate_limited", rule, status=429, retry_after=retry_after)
