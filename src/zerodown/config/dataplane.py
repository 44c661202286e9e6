"""`[proxy] dataplane` and the tables of the proxies zerodown can drive.

"embedded" is zerodown's own proxy; "haproxy" and "nginx" are the proxies
people already run, which zerodown starts and drives itself (their config and
runtime files under state_dir, never the system service's).
"""

from __future__ import annotations

from typing import Literal

from zerodown.config.fields import Table
from zerodown.dataplane.request_stats import RequestStats

DataPlaneName = Literal["embedded", "haproxy", "nginx"]
DATAPLANES: tuple[DataPlaneName, ...] = ("embedded", "haproxy", "nginx")


class HaproxyConfig(Table):
    """`[proxy.haproxy]`."""

    binary: str = "haproxy"  # looked up on PATH unless a path
    # A file appended verbatim (global/defaults tuning), checked with the rest.
    extra: str | None = None
    # Each request's latency logged to zerodown: only while its service has a
    # canary, or always (dataplane/request_stats.py).
    request_stats: RequestStats = "canary"


class NginxConfig(Table):
    """`[proxy.nginx]`."""

    binary: str = "nginx"
    extra: str | None = None  # a file included in the http block, checked with the rest
    # Each request logged to zerodown (its per-target counts): only while its
    # service has a canary, or always (dataplane/request_stats.py).
    request_stats: RequestStats = "canary"
    # How deploy steps reach nginx (dataplane/nginx/upstreams.py): "lua", a
    # table in shared memory with no reload, so no idle keep-alive client
    # connection is closed under a request; "reload", a new configuration
    # each step; "auto", lua when nginx's Lua module is installed.
    upstreams: Literal["auto", "lua", "reload"] = "auto"
