"""The HAProxy driver's own settings: plain values, filled by the config layer.

Durations are seconds. Every file the driver writes lives under `state_dir`
(never /etc/haproxy or /run): zerodown runs its own HAProxy beside, not
instead of, a system one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from zerodown.dataplane.request_stats import RequestStats
from zerodown.dataplane.shortpath import socket_dir
from zerodown.proxy.settings import TlsSettings

CONNECT_TIMEOUT: Final = 5.0
CLIENT_TIMEOUT: Final = 75.0  # an idle client (keep-alive or mid-request) is closed after this
SERVER_TIMEOUT: Final = 60.0  # longest wait for the next upstream byte
HTTP_REQUEST_TIMEOUT: Final = 10.0  # a whole request head
QUEUE_TIMEOUT: Final = 5.0
TUNNEL_TIMEOUT: Final = 3600.0  # WebSockets and other upgraded connections
STOP_TIMEOUT: Final = 30.0
MAX_SOCKET_PATH: Final = 97  # bytes: HAProxy refuses a longer unix socket path


@dataclass(frozen=True, slots=True)
class HaproxySettings:
    state_dir: Path
    binary: str = "haproxy"  # looked up on PATH
    threads: int = 1  # [proxy].workers: nbthread
    extra: Path | None = None  # appended verbatim (global/defaults tuning), checked with the rest
    connect_timeout: float = CONNECT_TIMEOUT
    client_timeout: float = CLIENT_TIMEOUT
    server_timeout: float = SERVER_TIMEOUT
    http_request_timeout: float = HTTP_REQUEST_TIMEOUT
    queue_timeout: float = QUEUE_TIMEOUT
    tunnel_timeout: float = TUNNEL_TIMEOUT
    stop_timeout: float = STOP_TIMEOUT
    # Client addresses (CIDRs) whose X-Forwarded-* and X-Request-ID are kept
    # (ProxySettings.trusted_proxies); from anyone else they are replaced.
    trusted_proxies: tuple[str, ...] = ()
    # Peers in trusted_proxies send a PROXY header first (ProxySettings.proxy_protocol).
    proxy_protocol: bool = False
    # The `dynamic-cookie-key` of sticky backends (hex, from state_dir).
    sticky_key: str = ""
    tls: TlsSettings | None = None  # [proxy.tls]: listeners among `listen`, certificates
    # Which requests the proxy reports to zerodown (dataplane/request_stats.py).
    request_stats: RequestStats = "canary"

    @property
    def config(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "haproxy.pid"

    @property
    def stats_socket(self) -> Path:
        return self.socket_dir / "haproxy.sock"

    @property
    def master_socket(self) -> Path:
        return self.socket_dir / "haproxy-master.sock"

    @property
    def socket_dir(self) -> Path:
        """state_dir, unless its sockets' paths would pass HAProxy's limit
        (97 bytes): then a short private directory named after it, so that an
        adopting driver finds the same one."""
        return socket_dir(self.state_dir, "haproxy-master.sock", MAX_SOCKET_PATH)

    @property
    def server_state_file(self) -> Path:
        return self.state_dir / "haproxy.state"

    @property
    def table_file(self) -> Path:
        return self.state_dir / "haproxy-table.json"

    @property
    def hold_script(self) -> Path:
        return self.state_dir / "zerodown-hold.lua"

    @property
    def cache_map(self) -> Path:
        return self.state_dir / "haproxy-cache.map"  # release generations (haproxy/cache.py)

    @property
    def counted_map(self) -> Path:
        return self.state_dir / "haproxy-counted.map"  # services whose requests are logged

    @property
    def log_file(self) -> Path:
        return self.state_dir / "haproxy.log"
