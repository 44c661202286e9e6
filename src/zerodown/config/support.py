"""Which data plane carries which service feature: what the chosen one cannot
carry is refused at load, naming the key and the data planes that can,
never silently ignored (README: "Features by data plane").

HAProxy and nginx are driven as weighted pools (dataplane/haproxy,
dataplane/nginx) that also hold requests across a recreate's gap (each
driver's hold.py); request rules to a pool, a cookie that keeps a client on
its pool and a maintenance page instead of the hold are the embedded proxy's.
A cookie that keeps a client on its instance (`sticky`) all three carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from zerodown.config.dataplane import DATAPLANES, DataPlaneName
from zerodown.config.proxy import ProxyConfig
from zerodown.config.service import ServiceConfig


@dataclass(frozen=True, slots=True)
class Feature:
    key: str  # as the user writes it under [services.NAME]
    used: Callable[[ServiceConfig], bool]
    carried_by: frozenset[DataPlaneName]


EMBEDDED: frozenset[DataPlaneName] = frozenset({"embedded"})
EMBEDDED_HAPROXY: frozenset[DataPlaneName] = frozenset({"embedded", "haproxy"})
EMBEDDED_NGINX: frozenset[DataPlaneName] = frozenset({"embedded", "nginx"})
EVERY: frozenset[DataPlaneName] = frozenset(DATAPLANES)
# HAProxy's `total-max-size` is in megabytes, 4095 at most (configuration.txt 6.2.1).
HAPROXY_MAX_CACHE: Final = 4095 * 1024 * 1024

FEATURES: tuple[Feature, ...] = (
    Feature('balance = "least_time"', lambda s: s.balance == "least_time", EMBEDDED),
    Feature("slow_start", lambda s: s.slow_start > 0, EMBEDDED_HAPROXY),
    Feature("sticky", lambda s: s.sticky is not None, EVERY),
    # nginx reads the cookie as $cookie_NAME: a variable name (nginx/sticky.py).
    Feature(
        "sticky.cookie (with a character other than letters, digits and '_')",
        lambda s: s.sticky is not None and not s.sticky.cookie.replace("_", "").isalnum(),
        EMBEDDED_HAPROXY,
    ),
    Feature('websocket_drain = "close"', lambda s: s.websocket_drain == "close", EMBEDDED),
    Feature("canary.cohorts", lambda s: bool(s.canary.cohorts), EMBEDDED),
    # Only when written: the default cookie is simply not set where not carried.
    Feature(
        "canary.sticky_cookie",
        lambda s: (
            "sticky_cookie" in s.canary.model_fields_set and s.canary.sticky_cookie is not None
        ),
        EMBEDDED,
    ),
    # The preview is the preview header's rule to green (a cohort).
    Feature(
        "blue_green.preview_pause",
        lambda s: s.blue_green.preview_pause == "manual" or s.blue_green.preview_pause > 0,
        EMBEDDED,
    ),
    Feature(
        "recreate.max_pause",
        lambda s: "max_pause" in s.recreate.model_fields_set and s.recreate.max_pause > 0,
        EVERY,
    ),
    Feature(
        "recreate.maintenance_page", lambda s: s.recreate.maintenance_page is not None, EMBEDDED
    ),
    # At the edge (config/guard.py): every data plane renders them, each in its own
    # terms (README: "Features by data plane" says how closely).
    Feature("allow", lambda s: bool(s.allow), EVERY),
    Feature("deny", lambda s: bool(s.deny), EVERY),
    Feature("block", lambda s: s.block is not None, EVERY),
    Feature("rate_limit", lambda s: s.rate_limit is not None, EVERY),
    # A shared cache (config/cache.py); HAProxy's never stores nor serves a
    # request with Authorization, and holds 4095 MB at most.
    Feature("cache", lambda s: s.cache is not None, EVERY),
    Feature(
        "cache.authorized = true",
        lambda s: s.cache is not None and s.cache.authorized,
        EMBEDDED_NGINX,
    ),
    Feature(
        "cache.max_size (over 4095MB)",
        lambda s: s.cache is not None and s.cache.max_size > HAPROXY_MAX_CACHE,
        EMBEDDED_NGINX,
    ),
    # L4 (config/tcp.py): HAProxy in `mode tcp`, nginx in its `stream {}` block.
    Feature('mode = "tcp"', lambda s: s.mode == "tcp", EVERY),
)


@dataclass(frozen=True, slots=True)
class ProxyFeature:
    key: str  # as the user writes it under [proxy]
    used: Callable[[ProxyConfig], bool]
    carried_by: frozenset[DataPlaneName]


PROXY_FEATURES: tuple[ProxyFeature, ...] = (
    # nginx demands the header of every peer on the listener, the others of
    # trusted peers only (docs/config.md, "PROXY protocol").
    ProxyFeature("proxy_protocol", lambda p: p.proxy_protocol, EVERY),
)


def not_carried(dataplane: DataPlaneName, service: ServiceConfig) -> list[tuple[str, str]]:
    """(key, reason) for each feature `service` uses that `dataplane` does not carry."""
    return [
        (feature.key, _reason(dataplane, feature.carried_by))
        for feature in FEATURES
        if dataplane not in feature.carried_by and feature.used(service)
    ]


def proxy_not_carried(proxy: ProxyConfig) -> list[tuple[str, str]]:
    """(key, reason) for each `[proxy]` feature the chosen data plane does not carry."""
    return [
        (feature.key, _reason(proxy.dataplane, feature.carried_by))
        for feature in PROXY_FEATURES
        if proxy.dataplane not in feature.carried_by and feature.used(proxy)
    ]


def _reason(dataplane: DataPlaneName, carried_by: frozenset[DataPlaneName]) -> str:
    by = " and ".join(d for d in DATAPLANES if d in carried_by)
    return (
        f"not carried by the {dataplane} data plane, only by {by}: "
        f'remove it, or set [proxy] dataplane = "embedded"'
    )
