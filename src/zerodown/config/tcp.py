"""What a `mode = "tcp"` service may not say: the keys that only mean
something to HTTP (a route, a cookie, a header, a request to retry or
cache, a page to answer with). A tcp service sees bytes, not requests, so
each is refused at load, naming it, rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from zerodown.config.service import ServiceConfig

# What a tcp connection can be balanced by: no request to read a key from,
# and no response time to learn from (least_time).
TCP_BALANCE: Final = frozenset({"round_robin", "least_conn", "ip_hash", "random_two"})

_Used = Callable[["ServiceConfig"], bool]


def _written(key: str) -> _Used:
    return lambda s: key in s.model_fields_set


# (key as the user writes it, why it means nothing to a tcp service, is it used)
HTTP_ONLY: Final[tuple[tuple[str, str, _Used], ...]] = (
    ("route", "a tcp service is reached by its own `listen`", _written("route")),
    ("hash_key", "there is no request to hash", _written("hash_key")),
    ("sticky", "there is no cookie to keep a client on", _written("sticky")),
    ("tries", "a connection is not retried once its bytes flow", _written("tries")),
    ("retry_timeout", "a connection is not retried once its bytes flow", _written("retry_timeout")),
    ("websocket_drain", "there are no websockets, only connections", _written("websocket_drain")),
    ("cache", "there are no responses to cache", _written("cache")),
    ("block", "there are no paths, methods or user agents", _written("block")),
    ("rate_limit", "requests are not counted on a tcp service", _written("rate_limit")),
    (
        "health.path",
        "its health check is a TCP connect",
        lambda s: s.health is not None and "path" in s.health.model_fields_set,
    ),
    (
        "health.expect_status",
        "its health check is a TCP connect",
        lambda s: s.health is not None and "expect_status" in s.health.model_fields_set,
    ),
    (
        "canary.cohorts",
        "there is no header or cookie to pick a pool by",
        lambda s: bool(s.canary.cohorts),
    ),
    (
        "canary.sticky_cookie",
        "there is no cookie to keep a client on its pool",
        lambda s: "sticky_cookie" in s.canary.model_fields_set,
    ),
    (
        "blue_green.preview_pause",
        "the preview is a request header",
        lambda s: "preview_pause" in s.blue_green.model_fields_set,
    ),
    (
        "recreate.max_pause",
        "connections are not held while no instance serves",
        lambda s: "max_pause" in s.recreate.model_fields_set,
    ),
    (
        "recreate.maintenance_page",
        "there is no page to answer a connection with",
        lambda s: s.recreate.maintenance_page is not None,
    ),
)


def http_only_keys(service: ServiceConfig) -> list[tuple[str, str]]:
    """(key, reason) for each HTTP-only key a tcp service sets."""
    found = [(key, why) for key, why, used in HTTP_ONLY if used(service)]
    if service.balance not in TCP_BALANCE:
        allowed = ", ".join(sorted(TCP_BALANCE))
        found.append(("balance", f"a tcp service is balanced by {allowed}"))
    return found
