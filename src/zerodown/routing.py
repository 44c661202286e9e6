"""The routing table: everything the data plane needs, and nothing more.

The orchestrator (or the config, for fixed upstreams) builds a RoutingTable;
the data plane obeys it. It is a value: replaced whole, never edited in place,
so a data plane can swap it atomically while traffic flows. Durations are
seconds (float); the config layer turns "1s"-style strings into these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zerodown.cachespec import CacheSpec
from zerodown.guardspec import GuardSpec

TargetState = Literal["ready", "draining", "down"]
# What a data plane reports of a target (zerodown.stats): its admin state
# (the lifecycle of proxy/target.py) and its health (proxy/health.py).
AdminState = Literal["adding", "ready", "down", "draining", "gone"]
HealthState = Literal["up", "down", "ejected"]
PoolName = Literal["stable", "canary"]
# What a table may ask beyond weighted pools, which not every data plane
# carries (DataPlane.carries): request rules to the canary pool (cohorts, the
# blue-green preview header), a cookie that keeps a client on its pool, and
# requests held while no target serves (recreate).
TableFeature = Literal["cohorts", "sticky_cookie", "hold"]
TABLE_FEATURES: frozenset[TableFeature] = frozenset({"cohorts", "sticky_cookie", "hold"})
BalanceName = Literal["round_robin", "least_conn", "ip_hash", "hash", "random_two", "least_time"]
WebSocketDrain = Literal["keep", "close"]
# http: routed by host and path on the shared listeners; tcp: raw bytes on a
# listener of its own (`listen`), balanced per connection (proxy/tcp.py).
ServiceMode = Literal["http", "tcp"]

DEFAULT_WEIGHT = 1
MAX_WEIGHT = 1000
DEFAULT_TRIES = 3
DEFAULT_RETRY_TIMEOUT = 10.0


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port"); raise ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} in {address!r} is out of range 1-65535")
    return host, number


class TargetSpec(_Value):
    address: str
    weight: int = Field(default=DEFAULT_WEIGHT, ge=0, le=MAX_WEIGHT)
    state: TargetState = "ready"
    version: str | None = None  # the release label, for stats and X-Version-free reporting

    @field_validator("address")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        parse_address(value)
        return value


class PoolSpec(_Value):
    targets: tuple[TargetSpec, ...] = ()

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: tuple[TargetSpec, ...]) -> tuple[TargetSpec, ...]:
        seen = [t.address for t in targets]
        dupes = sorted({a for a in seen if seen.count(a) > 1})
        if dupes:
            raise ValueError(f"target listed twice in one pool: {', '.join(dupes)}")
        return targets


class CohortRule(_Value):
    """Requests whose header or cookie has one of `values` always go to `pool`."""

    header: str | None = None
    cookie: str | None = None
    values: tuple[str, ...]
    pool: PoolName

    @model_validator(mode="after")
    def _one_source(self) -> CohortRule:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("a cohort rule names exactly one of header or cookie")
        return self


class Split(_Value):
    """How traffic divides between the stable and canary pools."""

    canary_weight: float = Field(default=0.0, ge=0.0, le=100.0)  # percent of traffic
    cohorts: tuple[CohortRule, ...] = ()
    # Sticky assignment: the pool a client got is remembered in this cookie so
    # one client does not flip between versions as the weight moves.
    sticky_cookie: str | None = None


class HealthSpec(_Value):
    path: str | None = "/health"  # None: the check is a TCP connect (a tcp service's)
    interval: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)
    expect_status: tuple[int, ...] = (200,)  # empty: any 2xx or 3xx


class PassiveHealthSpec(_Value):
    """Outlier detection from real traffic (Envoy-style ejection)."""

    consecutive_errors: int = Field(default=5, ge=1)  # connect errors or 5xx in a row
    base_ejection_time: float = Field(default=10.0, gt=0)
    max_ejection_time: float = Field(default=300.0, gt=0)
    max_ejection_percent: float = Field(default=50.0, ge=0, le=100)


class HoldSpec(_Value):
    """While no target can serve (a recreate deploy's gap), requests wait up to
    `timeout` for one, or, with `maintenance_html`, get that page with 503 at once."""

    timeout: float = Field(default=30.0, gt=0)
    maintenance_html: str | None = None
    retry_after: int = Field(default=5, ge=0)  # seconds, for the maintenance page


# RFC 6265 §4.1.1: a cookie name is an RFC 9110 token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_cookie_name(name: str) -> str:
    if not _COOKIE_NAME.fullmatch(name):
        raise ValueError(f"cookie name {name!r} is not a token (letters, digits, !#$%&'*+.^_`|~-)")
    return name


class StickySpec(_Value):
    """Keep a client on one instance: the data plane sets `cookie` to an opaque,
    signed name of the target that served it, for `ttl` seconds (Max-Age)."""

    cookie: str = "zd_route"
    ttl: float = Field(default=3600.0, gt=0)

    @field_validator("cookie")
    @classmethod
    def _token(cls, name: str) -> str:
        return check_cookie_name(name)


class ServiceSpec(_Value):
    name: str
    host: str = "*"  # exact, "*.example.com", or "*" for any
    path: str = "/"  # longest prefix wins
    strip_prefix: bool = False
    balance: BalanceName = "round_robin"
    hash_key: str = "path"  # for balance="hash": "path", "ip", "header:NAME", "cookie:NAME"
    stable: PoolSpec = PoolSpec()
    canary: PoolSpec = PoolSpec()
    split: Split = Split()
    health: HealthSpec | None = HealthSpec()
    passive: PassiveHealthSpec | None = PassiveHealthSpec()
    slow_start: float = Field(default=0.0, ge=0)  # seconds for a returning target to reach weight
    tries: int = Field(default=DEFAULT_TRIES, ge=1, le=20)
    retry_timeout: float = Field(default=DEFAULT_RETRY_TIMEOUT, gt=0)
    websocket_drain: WebSocketDrain = "keep"
    hold: HoldSpec | None = None
    sticky: StickySpec | None = None
    guard: GuardSpec | None = None  # allow/deny, block, rate_limit (guardspec.py)
    cache: CacheSpec | None = None  # a shared HTTP cache (cachespec.py)
    mode: ServiceMode = "http"
    listen: str | None = None  # "host:port" of a tcp service's own listener

    @model_validator(mode="after")
    def _listen_for_tcp(self) -> ServiceSpec:
        if (self.mode == "tcp") != (self.listen is not None):
            raise ValueError("a tcp service, and only a tcp service, has its own `listen`")
        if self.listen is not None:
            parse_address(self.listen)
        return self

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"route path {path!r} must start with '/'")
        return path

    @field_validator("hash_key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        kind, _, name = key.partition(":")
        if kind in ("path", "ip") and not name:
            return key
        if kind in ("header", "cookie") and name:
            return key
        raise ValueError(f"hash_key {key!r} is not path, ip, header:NAME or cookie:NAME")


class RoutingTable(_Value):
    services: tuple[ServiceSpec, ...] = ()

    @field_validator("services")
    @classmethod
    def _unique_routes(cls, services: tuple[ServiceSpec, ...]) -> tuple[ServiceSpec, ...]:
        names = [s.name for s in services]
        # A tcp service is reached by its listener, not by a route.
        routes = [f"{s.host.lower()}{s.path}" for s in services if s.mode == "http"]
        listens = [s.listen for s in services if s.listen is not None]
        for label, items in (("service name", names), ("route", routes), ("listen", listens)):
            dupes = {i for i in items if items.count(i) > 1}
            if dupes:
                raise ValueError(f"{label} used twice: {', '.join(sorted(dupes))}")
        return services

    def service(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def http_services(self) -> tuple[ServiceSpec, ...]:
        return tuple(s for s in self.services if s.mode == "http")

    @property
    def tcp_services(self) -> tuple[ServiceSpec, ...]:
        return tuple(s for s in self.services if s.mode == "tcp")


def with_target_state(
    table: RoutingTable, service: str, address: str, state: TargetState
) -> RoutingTable:
    """A copy of `table` with one target's state changed (in whichever pool holds it)."""
    services = []
    for spec in table.services:
        if spec.name == service:
            spec = spec.model_copy(
                update={
                    "stable": _pool_with_state(spec.stable, address, state),
                    "canary": _pool_with_state(spec.canary, address, state),
                }
            )
        services.append(spec)
    return table.model_copy(update={"services": tuple(services)})


def _pool_with_state(pool: PoolSpec, address: str, state: TargetState) -> PoolSpec:
    targets = tuple(
        t.model_copy(update={"state": state}) if t.address == address else t for t in pool.targets
    )
    return pool.model_copy(update={"targets": targets})


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What a drain ended with: `cancelled` in-flight requests were cut at the deadline."""

    service: str
    address: str
    completed: bool
    cancelled: int
    seconds: float
