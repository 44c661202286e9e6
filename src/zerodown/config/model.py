"""The whole file: `[proxy]`, `[services.NAME]`, `[notify]`, `[events]` and
`[redis]`, and what the data plane gets from it."""

from __future__ import annotations

import re

from pydantic import field_validator, model_validator

from zerodown.config.fields import Table, problem
from zerodown.config.operate import EventsConfig, NotifyConfig
from zerodown.config.proxy import ProxyConfig
from zerodown.config.redis import RedisConfig
from zerodown.config.service import ServiceConfig
from zerodown.config.support import not_carried, proxy_not_carried
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable

# Names end up in URLs (/v1/...), CLI arguments and log paths (state_dir/logs/NAME/...).
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class Config(Table):
    proxy: ProxyConfig = ProxyConfig()
    services: dict[str, ServiceConfig] = {}
    notify: NotifyConfig = NotifyConfig()
    events: EventsConfig = EventsConfig()
    redis: RedisConfig | None = None  # no shared store unless one is named

    @field_validator("services")
    @classmethod
    def _services(cls, services: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        _check_names(services)
        _check_routes(services)
        return services

    @model_validator(mode="after")
    def _listeners(self) -> Config:
        # Two listeners on one port: the second bind fails at start; say so at load.
        seen = {_port(a): "[proxy] listen" for a in self.proxy.listen if _port(a) != 0}
        for name, service in self.services.items():
            if service.listen is None:
                continue
            port = _port(service.listen)
            if port in seen:
                raise problem(f"port {port} is also {seen[port]}", "services", name, "listen")
            seen[port] = f"services.{name}.listen"
        return self

    @model_validator(mode="after")
    def _carried(self) -> Config:
        for key, reason in proxy_not_carried(self.proxy):
            raise problem(reason, "proxy", *key.split("."))
        for name, service in self.services.items():
            for key, reason in not_carried(self.proxy.dataplane, service):
                raise problem(reason, "services", name, *key.split(" ")[0].split("."))
        return self

    def listen_addresses(self) -> list[str]:
        """What the data plane is started on: `[proxy] listen` first, then, for
        the embedded one, each tcp service's own listener (it tells them apart
        by the routing table, proxy/tcp.py; HAProxy and nginx render theirs)."""
        if self.proxy.dataplane != "embedded":
            return self.proxy.listeners()
        tcp = [s.listen for s in self.services.values() if s.listen is not None]
        return [*self.proxy.listeners(), *tcp]

    def proxy_settings(self) -> ProxySettings:
        return self.proxy.settings()

    def routing_table(self) -> RoutingTable:
        """Fixed `upstreams` become the stable pool; orchestrated services start empty."""
        return RoutingTable(services=tuple(s.spec(n) for n, s in self.services.items()))


def _check_names(services: dict[str, ServiceConfig]) -> None:
    for name in services:
        if not _SERVICE_NAME.fullmatch(name):
            reason = (
                "a service name is letters, digits, '-' and '_', starting with a letter or digit"
            )
            raise problem(reason, name)


def _check_routes(services: dict[str, ServiceConfig]) -> None:
    # Two services on one route: the router would pick one silently; say which two.
    seen: dict[tuple[str, str], str] = {}
    for name, service in services.items():
        if service.mode == "tcp":
            continue  # reached by its own listener
        route = (service.route.host, service.route.path)
        if route in seen:
            reason = f"same route (host {route[0]!r}, path {route[1]!r}) as service {seen[route]!r}"
            raise problem(reason, name, "route")
        seen[route] = name


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])
