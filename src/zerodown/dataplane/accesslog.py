"""Where a proxy zerodown drives sends one log line per request: a datagram
socket the driver reads. The nginx driver's `log_transport` "udp" and
"unix" (its default is a buffered file, nginx/logfile.py); HAProxy streams
its lines over TCP instead (logstream.py). A datagram per request costs the
controller a wakeup and a recv per request: 15-30 µs of its CPU each,
beside a proxy that spends 13-17 µs on the request itself.

Both proxies speak syslog: `<190>Dec  4 13:52:02 nginx: {json}`. The line
is a JSON object the driver's log format builds, carrying a random key
(LogTarget.key): a datagram from anyone but this proxy is ignored, so no
other local process can forge the counts the canary judge decides on.

Loopback UDP by default: a unix datagram socket's queue is
net.unix.max_dgram_qlen datagrams (10 by default), and with wrk at 12.7k
req/s 38 % of nginx's lines were lost there; a UDP socket queues up to its
receive buffer (LOG_RECEIVE_BUFFER, thousands of lines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "LOG_RECEIVE_BUFFER",
    "REFUSAL_LOG_BUDGET",
    "LogSocket",
    "LogTarget",
    "LogTransport",
    "RefusalLog",
    "parse_line",
]

LogTransport = Literal["udp", "unix"]
# Many datagrams may arrive between two turns of the event loop under load.
LOG_RECEIVE_BUFFER: Final = 4 * 1024 * 1024
# Refusal records a second, each naming its client and rule; beyond, one
# summary per rule a second. A flood from many addresses (every line
# distinct) cost the controller 16 µs a refused request in records alone.
REFUSAL_LOG_BUDGET: Final = 100


@dataclass(frozen=True, slots=True)
class LogTarget:
    """Where the proxy sends its log, and the key each line carries."""

    server: str  # "unix:/path" or "127.0.0.1:port"
    key: str = ""  # [0-9a-f]*: it goes into the proxy's config unquoted


def parse_line(datagram: bytes) -> dict[str, str] | None:
    """The JSON object of one syslog datagram, or None when it holds none."""
    start = datagram.find(b"{")
    if start < 0:
        return None
    try:
        value = json.loads(datagram[start:])
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class LogSocket:
    """The bound socket, read on the event loop; each datagram to `on_datagram`."""

    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self.on_datagram = on_datagram
        self.target = LogTarget("")
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        return f"<LogSocket {self.target.server or 'closed'}>"

    def open(self, transport: LogTransport, unix_path: Path, saved: LogTarget | None) -> LogTarget:
        """Bind where the last driver had it (its key too) if free, so an
        adopted proxy goes on sending here without a reload."""
        key = saved.key if saved is not None and saved.key.isalnum() else secrets.token_hex(8)
        if transport == "unix":
            unix_path.unlink(missing_ok=True)  # a dead driver's: the proxy reconnects by path
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(unix_path))
            server = f"unix:{unix_path}"
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", _saved_port(saved.server if saved is not None else None)))
            server = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LOG_RECEIVE_BUFFER)
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        self._sock, self.target = sock, LogTarget(server, key)
        return self.target

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _read(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                datagram = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            self.on_datagram(datagram)


def _saved_port(server: str | None) -> int:
    """The last driver's UDP port if it is still free, else 0 (any)."""
    if server is None or not server.startswith("127.0.0.1:"):
        return 0
    port = int(server.rpartition(":")[2])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


class RefusalLog:
    """The drivers' record of each refused request: the service, the kind
    (denied, blocked, rate_limited), the client and the rule, as the
    embedded proxy's access log names it; identical requests read at once
    are one record with their count. Past `budget` records in a second
    (`every` seconds), the rest are summed per rule and said once when the
    second ends."""

    def __init__(
        self,
        logger: logging.Logger,
        budget: int = REFUSAL_LOG_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        every: float = 1.0,
    ) -> None:
        self.logger = logger
        self.budget = budget
        self.every = every
        self._clock = clock
        self._second = -1.0
        self._spent = 0
        self._held: dict[tuple[str, str, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<RefusalLog spent={self._spent}/{self.budget} held={sum(self._held.values())}>"

    def __call__(self, service: str, kind: str, rule: str, client: str, times: int) -> None:
        now = self._clock()
        if now - self._second >= self.every:
            self.flush()
            self._second, self._spent = now, 0
        if self._spent < self.budget:
            self._spent += 1
            more = f" ({times} requests)" if times > 1 else ""
            self.logger.info(
                "%s: %s a request from %s: %s%s", service, kind, client or "-", rule, more
            )
            return
        key = (service, kind, rule)
        self._held[key] = self._held.get(key, 0) + times
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a pure caller): said at the next call or flush
            self._timer = loop.call_later(max(0.0, self._second + self.every - now), self.flush)

    def flush(self) -> None:
        """Say what the budget held back (also when the driver stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for (service, kind, rule), times in self._held.items():
            self.logger.info(
                "%s: %s %d more requests: %s (over %d refusal records a second: not one by one)",
                service,
                kind,
                times,
                rule,
                self.budget,
            )
        self._held.clear()
