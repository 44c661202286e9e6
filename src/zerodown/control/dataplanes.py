"""The data plane `[proxy] dataplane` names, built for the daemon."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Literal

from zerodown.config import Config
from zerodown.config.dataplane import DataPlaneName
from zerodown.config.support import not_carried
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.detached import DetachedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.render import render as render_haproxy
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx import process as nginx_process
from zerodown.dataplane.nginx.driver import NginxDataPlane
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.render import table as upstreams_table
from zerodown.dataplane.nginx.settings import (
    DEFAULT_WORKER_SHUTDOWN_TIMEOUT,
    NginxSettings,
    Paths,
)
from zerodown.dataplane.nginx.tls import NginxTls
from zerodown.dataplane.nginx.upstreams import UpstreamMode
from zerodown.dataplane.sticky_key import sticky_key
from zerodown.errors import ConfigError
from zerodown.proxy import tls
from zerodown.proxy.settings import ProxySettings

log = logging.getLogger("zerodown.daemon")


def managed_dataplane(config: Config, state_dir: Path) -> ManagedDataPlane:
    """The data plane of `config`, not started yet (its start adopts a running one)."""
    proxy, table = config.proxy, config.routing_table()
    if proxy.dataplane == "haproxy":
        return HaproxyDataPlane(haproxy_settings(config, state_dir), table)
    if proxy.dataplane == "nginx":
        return NginxDataPlane(nginx_settings(config, state_dir), table)
    settings = proxy_settings(config, state_dir)
    return DetachedDataPlane(settings, table, proxy.worker_count(), state_dir)


def proxy_settings(config: Config, state_dir: Path) -> ProxySettings:
    """`[proxy]` as the embedded data plane takes it, with the sticky key of
    state_dir. Always, sticky services or not: settings are how the next
    controller tells whether it may adopt the running data plane, and a key
    the workers' supervisor made up (as it does when given none) would differ
    from the next one's and replace a data plane that should be adopted."""
    return dataclasses.replace(config.proxy_settings(), sticky_key=sticky_key(state_dir))


def _any_sticky(config: Config) -> bool:
    return any(service.sticky is not None for service in config.services.values())


def check_certificates(config: Config) -> None:
    """Every `[proxy.tls]` certificate readable, matching its key and not expired;
    ConfigError names the key (proxy/tls.py). Any data plane: drivers included."""
    if config.proxy.tls is not None:
        now = datetime.datetime.now(datetime.UTC)
        for warning in tls.expiring(tls.check_all(config.proxy.tls.settings(), now), now):
            log.warning("TLS: %s", warning)


def haproxy_settings(config: Config, state_dir: Path) -> HaproxySettings:
    """`[proxy]` and `[proxy.haproxy]` as the HAProxy driver takes them."""
    proxy, limits = config.proxy, config.proxy_settings()
    return HaproxySettings(
        state_dir=state_dir / "haproxy",
        binary=proxy.haproxy.binary,
        threads=proxy.worker_count(),
        extra=Path(proxy.haproxy.extra) if proxy.haproxy.extra else None,
        connect_timeout=limits.connect_timeout,
        client_timeout=limits.keepalive_timeout,
        server_timeout=limits.read_timeout,
        queue_timeout=limits.queue_timeout,
        stop_timeout=limits.shutdown_timeout,
        trusted_proxies=tuple(str(cidr) for cidr in limits.trusted_proxies),
        proxy_protocol=limits.proxy_protocol,
        sticky_key=sticky_key(state_dir) if _any_sticky(config) else "",
        tls=limits.tls,
        request_stats=proxy.haproxy.request_stats,
    )


def nginx_settings(config: Config, state_dir: Path) -> NginxSettings:
    """`[proxy]` and `[proxy.nginx]` as the nginx driver takes them."""
    proxy = config.proxy
    drains = [service.drain_timeout for service in config.services.values()]
    return NginxSettings(
        state_dir=state_dir / "nginx",
        binary=proxy.nginx.binary,
        workers=proxy.worker_count(),
        # Old workers keep long-lived connections past a reload this long:
        # never shorter than a drain, which waits for them.
        worker_shutdown_timeout=max([DEFAULT_WORKER_SHUTDOWN_TIMEOUT, *drains]),
        extra_http=Path(proxy.nginx.extra).read_text() if proxy.nginx.extra else "",
        trusted_proxies=tuple(str(cidr) for cidr in config.proxy_settings().trusted_proxies),
        proxy_protocol=config.proxy.proxy_protocol,
        # nginx's `keepalive` (per worker and service) must be 1 at least.
        keepalive=max(1, config.proxy_settings().upstream_max_idle),
        sticky_key=sticky_key(state_dir) if _any_sticky(config) else "",
        tls=_nginx_tls(config),
        request_stats=proxy.nginx.request_stats,
        upstreams=_nginx_upstreams(proxy.nginx.upstreams, proxy.nginx.binary),
    )


def _nginx_upstreams(wanted: Literal["auto", "lua", "reload"], binary: str) -> UpstreamMode:
    """ "auto": the Lua balancer when the nginx binary loads its module."""
    if wanted != "auto":
        return wanted
    return "lua" if nginx_process.lua_works(binary) else "reload"


def _nginx_tls(config: Config) -> NginxTls | None:
    """`[proxy.tls]` with each certificate's names, which nginx's SNI blocks need:
    read from the files here (checked as at start), so the renderer stays pure."""
    settings = config.proxy_settings().tls
    if settings is None:
        return None
    names = tuple(c.names for c in tls.check_all(settings)) if len(settings.certs) > 1 else ((),)
    return NginxTls(settings, names)


def rendered(proxy: DataPlaneName, config: Config, state_dir: Path) -> str:
    """The configuration file the `proxy` driver would start with, from `config`;
    ConfigError for a key that proxy cannot carry, as loading with it would."""
    for name, service in config.services.items():
        for key, reason in not_carried(proxy, service):
            raise ConfigError(reason, key=f"services.{name}.{key.split(' ')[0]}")
    listen = config.proxy.listeners()
    if proxy == "haproxy":
        return render_haproxy(config.routing_table(), listen, haproxy_settings(config, state_dir))
    if proxy == "nginx":
        settings = nginx_settings(config, state_dir)
        services = config.routing_table().services
        text = render_nginx(services, listen, settings, generation=0)
        if settings.upstreams == "lua":  # the targets are in the table it loads
            table = upstreams_table(services, settings, 0).rstrip("\n").replace("\n", "\n# ")
            text += f"\n# {Paths(settings.state_dir).upstreams}, which it loads:\n# {table}\n"
        return text
    raise ValueError(f"no driver renders {proxy!r}")
