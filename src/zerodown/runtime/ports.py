"""Ports for the instances a runtime starts: from a range, never one in use.

A port is held from the moment an instance is started until the instance is
gone and its port free again, so a new instance never lands on one that is
still draining or stopping. Ports that something else listens on are skipped
by asking the probe.

A rotating cursor spreads picks over the range: the port of an instance that
just stopped is the last to come round again, so anything that still knows
its address (a late health check, a pooled keep-alive connection, a routing
table not yet applied) never meets a different release there. The runtime
starts its cursor at a random port of the range: two daemons on one host
(staging beside production, test runs side by side) would otherwise both
pick the range's first free port in the moment before either instance binds
it, and one deploy would fail on a port held by the other.

Allocators that share a `claimed` set never hand out each other's ports:
the daemon runs one runtime per service, often over the same range, and an
instance that has not bound its port yet (a slow start) is invisible to the
probe.

The bookkeeping is pure; the only I/O is the probe, which tests replace.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from zerodown.errors import DeployError

Probe = Callable[[str, int], bool]  # (host, port) -> could an app listen there right now?

# Linux's range for the local port of outgoing connections (connect() without bind()).
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


class NoFreePort(DeployError):
    """Every port of the range is held by an instance or busy."""


def can_listen(host: str, port: int) -> bool:
    """True when a server could bind `host:port` now.

    SO_REUSEADDR on, as servers set it (uvicorn, node, nginx): a port whose
    last connections sit in TIME_WAIT after an instance stopped is free for
    them, and must be free for us too, or a busy range would look exhausted
    for a minute after every deploy. A listening socket still refuses us.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_overlap(
    first: int, last: int, path: str = EPHEMERAL_RANGE_FILE
) -> tuple[int, int] | None:
    """The part of `first..last` the kernel may give to outgoing connections, or None.

    A port from there can be free when the probe looks and taken a moment
    later by any connect() on the host (the proxy's own, to the very
    instances it serves), before an app that starts slowly binds it: the app
    then exits with "address already in use" and the deploy rolls back.
    """
    try:
        low, high = (int(word) for word in Path(path).read_text().split())
    except (OSError, ValueError):  # not Linux, or no /proc: nothing to compare with
        return None
    overlap = (max(first, low), min(last, high))
    return overlap if overlap[0] <= overlap[1] else None


class PortAllocator:
    """Hands out ports of `first..last` (inclusive) that are neither held nor busy."""

    def __init__(
        self,
        first: int,
        last: int,
        *,
        host: str = "127.0.0.1",
        probe: Probe = can_listen,
        claimed: set[int] | None = None,
        start: int | None = None,
    ) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"port range {first}-{last} must be within 1-65535, low end first")
        if start is not None and not first <= start <= last:
            raise ValueError(f"start {start} is outside the port range {first}-{last}")
        self.first = first
        self.last = last
        self.host = host
        self._probe = probe
        self._cursor = first if start is None else start  # where the next search begins
        self._held: set[int] = set()  # ours
        self._claimed = set() if claimed is None else claimed  # ours and our peers'

    def __repr__(self) -> str:
        return f"<PortAllocator {self.first}-{self.last} held={sorted(self._held)}>"

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def take(self) -> int:
        """Hold and return the next port from the cursor on that is free; NoFreePort if none."""
        size = self.last - self.first + 1
        for step in range(size):
            port = self.first + (self._cursor - self.first + step) % size
            if port not in self._held and port not in self._claimed and self.is_free(port):
                self._cursor = port + 1 if port < self.last else self.first
                self.hold(port)
                return port
        held = sum(self.first <= port <= self.last for port in self._held | self._claimed)
        raise NoFreePort(
            f"no free port in {self.first}-{self.last} on {self.host}: "
            f"{held} held by instances, the other {size - held} busy"
        )

    def hold(self, port: int) -> None:
        """Mark `port` as ours without probing (an adopted instance listens there).

        Outside the range is fine: the range may have changed since it started.
        """
        self._held.add(port)
        self._claimed.add(port)

    def release(self, port: int) -> None:
        """Give `port` back once its instance is gone; ports not ours are ignored."""
        if port in self._held:
            self._held.discard(port)
            self._claimed.discard(port)

    def is_free(self, port: int) -> bool:
        """The probe's answer for `port` on our host (held or not)."""
        return self._probe(self.host, port)
