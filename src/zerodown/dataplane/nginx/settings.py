"""What the nginx driver is told besides the routing table: plain values.

The config layer ([proxy] and [proxy.nginx]) fills these in; the driver
takes nothing else, so it can be built and tested without a config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from zerodown.dataplane.nginx.tls import NginxTls
from zerodown.dataplane.nginx.upstreams import UpstreamMode
from zerodown.dataplane.request_stats import RequestStats

DEFAULT_WORKER_SHUTDOWN_TIMEOUT: Final = 60.0  # above the default drain_timeout (30s)
# Idle upstream connections each worker keeps per service: [proxy]
# upstream_max_idle, as the embedded proxy keeps per target. The pool must
# cover the requests in flight: with 32, wrk at 50-1,000 connections made
# nginx open and close backend connections all the time, and zerodown's
# nginx served 0.55-0.74x plain nginx's (keepalive 1024) requests/s; with
# 1024, 0.95-1.46x (bench, own core, same run, 2026-12-04).
DEFAULT_KEEPALIVE: Final = 1024
# Requests on one keep-alive connection, client's and upstream's, before
# nginx closes it (its default, 1000, frees a connection's memory now and
# then): at 1000, every 1000th request paid a new connection to the app and
# made the client reconnect; 10,000 makes that cost a tenth, and still
# recycles a connection's memory (bench/templates/nginx-proxy.conf uses 1e6).
KEEPALIVE_REQUESTS: Final = 10_000
DEFAULT_RELOAD_TIMEOUT: Final = 10.0  # for `nginx -t` and for new workers to answer
DEFAULT_STOP_TIMEOUT: Final = 10.0


NginxLogTransport = Literal["file", "udp", "unix"]


@dataclass(frozen=True, slots=True)
class NginxSettings:
    state_dir: Path  # conf, pid, temp files, logs and sockets all live here
    binary: str = "nginx"  # looked up on PATH unless a path
    workers: int = 1  # worker_processes
    # How long old workers may keep long-lived connections (WebSockets,
    # slow downloads) after a reload before nginx closes them.
    worker_shutdown_timeout: float = DEFAULT_WORKER_SHUTDOWN_TIMEOUT
    keepalive: int = DEFAULT_KEEPALIVE
    reload_timeout: float = DEFAULT_RELOAD_TIMEOUT
    # `user` directive: None renders none. Only matters when zerodown runs as
    # root (the driver then renders the owner of state_dir, see driver.py).
    user: str | None = None
    # How the access log reaches the driver. "file": a buffered file under
    # state_dir read in large chunks (logfile.py), which keeps the driver's
    # cost per request well under a microsecond. "udp"/"unix": one syslog
    # datagram per request, read one at a time (about 15 µs each on the
    # controller). A unix datagram socket's queue is net.unix.max_dgram_qlen
    # datagrams (10 by default): measured with wrk at 12.7k req/s, 38% of
    # lines were lost. A loopback UDP socket queues up to its receive buffer
    # (4 MiB here, thousands of lines); each line carries a random key so no
    # other local process can forge one.
    log_transport: NginxLogTransport = "file"
    # Client addresses (CIDRs) whose X-Forwarded-For and X-Request-ID are
    # kept (ProxySettings.trusted_proxies); from anyone else they are replaced.
    trusted_proxies: tuple[str, ...] = ()
    # Every connection on every listener sends a PROXY header first, and only a
    # trusted peer's is believed (ProxySettings.proxy_protocol; nginx/proxy_protocol.py).
    proxy_protocol: bool = False
    # Appended verbatim inside `http {}` (tuning), checked by `nginx -t` with the rest.
    extra_http: str = ""
    # Signs the tokens of sticky cookies (hex, from state_dir; proxy/sticky.py).
    sticky_key: str = ""
    # Leads every X-Request-ID this nginx makes (render.request_id): random
    # hex, made once and kept in the driver's state.json, so that ids from
    # two hosts never meet in one log. "" renders none (`zerodown render`).
    request_id_prefix: str = ""
    tls: NginxTls | None = None  # [proxy.tls]: listeners among `listen`, certificates
    # Which requests the proxy reports to zerodown (dataplane/request_stats.py).
    request_stats: RequestStats = "canary"
    # How a deploy step reaches nginx: "lua", a new table in shared memory
    # read by balancer_by_lua, with no reload (upstreams.py); "reload", a
    # whole new configuration. [proxy.nginx] upstreams = "auto" picks "lua"
    # when the module is installed.
    upstreams: UpstreamMode = "reload"


@dataclass(frozen=True, slots=True)
class Paths:
    """Every file nginx and the driver share, under one prefix."""

    prefix: Path

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pending(self) -> Path:
        return self.prefix / "nginx.conf.new"

    @property
    def pid(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def access_socket(self) -> Path:
        return self.prefix / "access.sock"

    @property
    def upstreams(self) -> Path:
        return self.prefix / "upstreams.txt"  # the table init_by_lua loads (upstreams.py)

    @property
    def lua(self) -> Path:
        return self.prefix / "lua"  # zerodown_upstreams.lua, copied where nginx reads it

    @property
    def control_socket(self) -> Path:
        return self.prefix / "control.sock"

    @property
    def temp(self) -> Path:
        return self.prefix / "temp"

    @property
    def cache(self) -> Path:
        return self.prefix / "cache"  # one directory per cached service (nginx/cache.py)

    @property
    def state(self) -> Path:
        return self.prefix / "state.json"  # the driver's: table, listen, generation, log
