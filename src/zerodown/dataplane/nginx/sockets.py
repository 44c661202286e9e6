"""Open TCP connections to a target, from the kernel's tables: how a drain
under the Lua balancer (upstreams.py) knows the target's requests are over.

Every request nginx has in flight at a target holds a connection to it,
from the moment the balancer picks the target (connecting) until the answer
is read; after that the connection is closed or kept idle in the worker's
keep-alive pool, which closes it after the upstream's `keepalive_timeout`
(upstreams.IDLE_TIMEOUT). So once no new request can reach the target, no
open connection to it means no request there is in flight. Counting this
way asks nothing of nginx per request: a Lua hook at each request's end
cost 3,800 instructions a request (bench/callgrind_proxy.sh).

Connections of this process (the driver's own health checks) do not count;
any other program's do, which can only make a drain wait longer, never end
it early.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from zerodown.routing import parse_address

__all__ = ["count_open", "open_to", "own_inodes"]

TABLES: Final = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
# TCP states (include/net/tcp_states.h) of a connection that may still carry
# a request: being made, open, or closed by the target but not yet by us.
_OPEN: Final = frozenset({"01", "02", "08"})  # ESTABLISHED, SYN_SENT, CLOSE_WAIT


def _kernel_hex(address: str) -> str:
    """host:port as /proc/net/tcp{,6} spells a remote address."""
    host, port = parse_address(address)
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:  # a connect to 0.0.0.0 or :: reaches the loopback
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    raw = ip.packed
    # Each 32-bit word in the host's byte order.
    step = -1 if sys.byteorder == "little" else 1
    words = [raw[i : i + 4][::step].hex().upper() for i in range(0, len(raw), 4)]
    return f"{''.join(words)}:{port:04X}"


def open_to(lines: Iterable[str], address: str, exclude: frozenset[int]) -> int:
    """Connections in `lines` (a /proc/net/tcp table) open to `address`,
    but those whose socket inode is in `exclude`."""
    remote = _kernel_hex(address)
    count = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[2] != remote or fields[3] not in _OPEN:
            continue
        if fields[9].isdigit() and int(fields[9]) in exclude:
            continue
        count += 1
    return count


def own_inodes(fd_dir: Path = Path("/proc/self/fd")) -> frozenset[int]:
    """The socket inodes this process holds."""
    inodes = set()
    for entry in os.scandir(fd_dir):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return frozenset(inodes)


def count_open(address: str, tables: Iterable[Path] = TABLES) -> int:
    """Connections open to `address` now, from any process but this one."""
    exclude = own_inodes()
    total = 0
    for table in tables:
        try:
            with table.open() as file:
                next(file, None)  # the header
                total += open_to(file, address, exclude)
        except OSError:
            continue  # no IPv6 here
    return total
