"""`[services.NAME]`: how one service is routed, balanced, checked and deployed.

Defaults and bounds shared with the routing spec are taken from it
(`same_as`), so the file and the data plane cannot disagree on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from zerodown.config import defaults
from zerodown.config.cache import CacheConfig
from zerodown.config.fields import (
    Address,
    Cidr,
    Duration,
    Table,
    Timeout,
    UrlPath,
    check_template,
    problem,
    same_as,
    table_or_false,
)
from zerodown.config.guard import BlockConfig, RateLimitConfig, guard_spec
from zerodown.config.strategy import (
    BlueGreenConfig,
    CanaryConfig,
    RecreateConfig,
    RollingConfig,
    StrategyName,
)
from zerodown.config.tcp import http_only_keys
from zerodown.proxy.settings import DRAIN_TIMEOUT
from zerodown.routing import (
    BalanceName,
    HealthSpec,
    HoldSpec,
    PassiveHealthSpec,
    PoolSpec,
    ServiceMode,
    ServiceSpec,
    Split,
    StickySpec,
    TargetSpec,
    WebSocketDrain,
    check_cookie_name,
)

# What a deploy fills into `command` and `cwd` (DESIGN: user-facing contract).
COMMAND_PLACEHOLDERS = ("port", "version")
CWD_PLACEHOLDERS = ("version",)
_NO_POOL = PoolSpec()
_NO_SPLIT = Split()  # all traffic to the stable pool


class RouteConfig(Table):
    host: str = same_as(ServiceSpec, "host")
    path: UrlPath = same_as(ServiceSpec, "path")
    strip_prefix: bool = same_as(ServiceSpec, "strip_prefix")

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        # The router knows three forms; anything else would silently never match.
        if host == "*" or (host and "*" not in host.removeprefix("*.")):
            return host.lower()
        raise ValueError(f"host {host!r} is an exact name, '*.example.com' or '*'")


class UpstreamConfig(Table):
    address: Address
    weight: int = same_as(TargetSpec, "weight")


def _upstreams(value: Any) -> Any:
    # "host:port" is shorthand for { address = "host:port" } with the default weight.
    if not isinstance(value, list):
        return value
    for i, item in enumerate(value):
        if not isinstance(item, str | Mapping):
            raise problem(f'expected "host:port" or {{ address, weight }}, got {item!r}', i)
    return [{"address": item} if isinstance(item, str) else item for item in value]


def _port_range(value: Any) -> tuple[int, int]:
    low, sep, high = value.partition("-") if isinstance(value, str) else ("", "", "")
    if not (sep and low.isdigit() and high.isdigit()):
        raise ValueError(f'expected a range like "20000-29999", got {value!r}')
    first, last = int(low), int(high)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"range {value!r} must be within 1-65535, low end first")
    return first, last


class HealthConfig(Table):
    path: UrlPath = same_as(HealthSpec, "path")
    interval: Timeout = same_as(HealthSpec, "interval")
    timeout: Timeout = same_as(HealthSpec, "timeout")
    rise: int = same_as(HealthSpec, "rise")
    fall: int = same_as(HealthSpec, "fall")
    expect_status: tuple[Annotated[int, Field(ge=100, le=599)], ...] = Field(
        default=HealthSpec().expect_status, strict=False
    )

    def spec(self) -> HealthSpec:
        return HealthSpec(**self.model_dump())


class PassiveConfig(Table):
    consecutive_errors: int = same_as(PassiveHealthSpec, "consecutive_errors")
    base_ejection_time: Timeout = same_as(PassiveHealthSpec, "base_ejection_time")
    max_ejection_time: Timeout = same_as(PassiveHealthSpec, "max_ejection_time")
    max_ejection_percent: float = same_as(PassiveHealthSpec, "max_ejection_percent")

    def spec(self) -> PassiveHealthSpec:
        return PassiveHealthSpec(**self.model_dump())


class StickyConfig(Table):
    """`sticky = { cookie, ttl }`: keep each client on the instance that served it."""

    cookie: str = same_as(StickySpec, "cookie")
    ttl: Timeout = same_as(StickySpec, "ttl")

    @field_validator("cookie")
    @classmethod
    def _cookie(cls, name: str) -> str:
        return check_cookie_name(name)  # one rule for a cookie name, the spec's

    def spec(self) -> StickySpec:
        return StickySpec(**self.model_dump())


class ServiceConfig(Table):
    # L7 (routed by host and path) or L4 (raw TCP on a listener of its own)
    mode: ServiceMode = same_as(ServiceSpec, "mode")
    listen: Address | None = None

    # routing and balancing
    route: RouteConfig = RouteConfig()
    balance: BalanceName = same_as(ServiceSpec, "balance")
    hash_key: str = same_as(ServiceSpec, "hash_key")
    upstreams: Annotated[tuple[UpstreamConfig, ...] | None, BeforeValidator(_upstreams)] = Field(
        default=None, strict=False
    )
    health: Annotated[HealthConfig | None, BeforeValidator(table_or_false)] = HealthConfig()
    passive: Annotated[PassiveConfig | None, BeforeValidator(table_or_false)] = PassiveConfig()
    slow_start: Duration = same_as(ServiceSpec, "slow_start")
    tries: int = same_as(ServiceSpec, "tries")
    retry_timeout: Timeout = same_as(ServiceSpec, "retry_timeout")
    websocket_drain: WebSocketDrain = same_as(ServiceSpec, "websocket_drain")
    sticky: Annotated[StickyConfig | None, BeforeValidator(table_or_false)] = None

    # at the edge: who may ask, what is refused, how fast (config/guard.py)
    allow: tuple[Cidr, ...] = Field(default=(), strict=False)
    deny: tuple[Cidr, ...] = Field(default=(), strict=False)
    rate_limit: RateLimitConfig | None = None
    block: BlockConfig | None = None
    # a shared HTTP cache by the responses' own Cache-Control (config/cache.py)
    cache: Annotated[CacheConfig | None, BeforeValidator(table_or_false)] = None

    # orchestration (a service zerodown runs itself, with `command`)
    strategy: StrategyName = defaults.STRATEGY
    instances: int = Field(default=defaults.INSTANCES, ge=1)
    command: str | None = None
    cwd: str = defaults.CWD
    env: dict[str, str] = {}
    drain_timeout: Timeout = DRAIN_TIMEOUT
    stop_grace: Duration = defaults.STOP_GRACE
    deploy_timeout: Timeout = defaults.DEPLOY_TIMEOUT
    warmup: Duration = defaults.WARMUP
    keep_releases: int = Field(default=defaults.KEEP_RELEASES, ge=1)
    ports: Annotated[tuple[int, int], BeforeValidator(_port_range)] = defaults.PORTS
    rolling: RollingConfig = RollingConfig()
    blue_green: BlueGreenConfig = BlueGreenConfig()
    canary: CanaryConfig = CanaryConfig()
    recreate: RecreateConfig = RecreateConfig()

    @field_validator("hash_key")
    @classmethod
    def _hash_key(cls, key: str) -> str:
        kind, _, name = key.partition(":")
        if (kind in ("path", "ip") and not name) or (kind in ("header", "cookie") and name):
            return key
        raise ValueError(f"{key!r} is not path, ip, header:NAME or cookie:NAME")

    @field_validator("upstreams")
    @classmethod
    def _unique(
        cls, upstreams: tuple[UpstreamConfig, ...] | None
    ) -> tuple[UpstreamConfig, ...] | None:
        if upstreams == ():
            raise ValueError('must not be empty; list at least one "host:port"')
        addresses = [u.address for u in upstreams or ()]
        for i, address in enumerate(addresses):
            if address in addresses[:i]:
                raise problem(f"{address} is listed twice", i, "address")
        return upstreams

    @field_validator("command")
    @classmethod
    def _command(cls, command: str | None) -> str | None:
        return None if command is None else check_template(command, COMMAND_PLACEHOLDERS)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str) -> str:
        return check_template(cwd, CWD_PLACEHOLDERS)

    @model_validator(mode="after")
    def _one_source(self) -> ServiceConfig:
        # Fixed upstreams and instances zerodown runs would fight over the stable pool.
        if (self.upstreams is None) == (self.command is None):
            said = "are both set" if self.command else "are both missing"
            reason = f"`upstreams` and `command` {said}; a service has exactly one"
            raise problem(f"{reason} (fixed addresses, or instances zerodown runs)")
        return self

    @model_validator(mode="after")
    def _tcp(self) -> ServiceConfig:
        if self.mode == "http":
            if self.listen is not None:
                raise problem('only a mode = "tcp" service has a `listen` of its own', "listen")
            return self
        if self.listen is None:
            raise problem('a mode = "tcp" service needs `listen = "host:port"`', "listen")
        for key, why in http_only_keys(self):
            raise problem(f"HTTP only, refused on a tcp service: {why}", *key.split("."))
        return self

    @model_validator(mode="after")
    def _ports_fit(self) -> ServiceConfig:
        # Checked at load, not at the deploy that runs out of ports half-way
        # (or spawns instances that all fail to bind).
        if self.command is None:
            return self  # fixed upstreams: zerodown starts nothing
        first, last = self.ports
        have, need = last - first + 1, self.ports_needed()
        if need > have:
            sets = "the serving set and a deploy's new one"
            if self.blue_green.scale_down_delay > 0:
                sets += ", and a blue-green set kept warm for blue_green.scale_down_delay"
            reason = (
                f"instances = {self.instances} needs up to {need} ports at once "
                f"({self.instances} each for {sets}); ports {first}-{last} has {have}"
            )
            raise problem(reason, "instances")
        return self

    def ports_needed(self) -> int:
        """The most instances of this service that can be running at once.

        A deploy runs the serving set and the new one side by side (blue-green
        and canary start a full new set; rolling's `instances + max_surge`
        ceiling is never more). After a blue-green switch the old set stays
        up for `scale_down_delay` and the next deploy may start meanwhile.
        Any deploy may pick any strategy, so this holds whatever `strategy` says.
        """
        sets = 3 if self.blue_green.scale_down_delay > 0 else 2
        return sets * self.instances

    def spec(
        self,
        name: str,
        *,
        stable: PoolSpec | None = None,
        canary: PoolSpec = _NO_POOL,
        split: Split = _NO_SPLIT,
        hold: HoldSpec | None = None,
    ) -> ServiceSpec:
        """The routing spec of this service: the one mapping of config to spec.

        The pools, the split and the hold are what a deploy changes: a Fleet
        passes them for a service zerodown runs (deploy/fleet.py). Without
        them, the pool is the fixed `upstreams` (empty for a `command`)."""
        if stable is None:
            targets = (TargetSpec(address=u.address, weight=u.weight) for u in self.upstreams or ())
            stable = PoolSpec(targets=tuple(targets))
        return ServiceSpec(
            name=name,
            **self.route.model_dump(),
            balance=self.balance,
            hash_key=self.hash_key,
            stable=stable,
            canary=canary,
            split=split,
            hold=hold,
            health=self.health_spec(),
            passive=self.passive.spec() if self.passive else None,
            slow_start=self.slow_start,
            tries=self.tries,
            retry_timeout=self.retry_timeout,
            websocket_drain=self.websocket_drain,
            sticky=self.sticky.spec() if self.sticky else None,
            guard=guard_spec(self.allow, self.deny, self.rate_limit, self.block),
            cache=self.cache.spec() if self.cache else None,
            mode=self.mode,
            listen=self.listen,
        )

    def health_spec(self) -> HealthSpec | None:
        if self.health is None:
            return None
        spec = self.health.spec()
        # A tcp service's check is a connect: no path to ask for.
        return spec.model_copy(update={"path": None}) if self.mode == "tcp" else spec
