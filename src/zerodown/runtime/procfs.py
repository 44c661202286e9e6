"""Is this pid still the process we started, and which sockets listen where?
Answered from /proc (Linux).

A pid alone is not an identity: after the process exits the kernel hands the
number to the next process that asks. The pair (pid, start time) is, since a
start time does not change over a process's life (exec included) and two
processes cannot hold the same pid at the same clock tick.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")  # /proc counts start times in these
_STATE = 0  # field 3 of /proc/<pid>/stat, counting from the field after the name
_STARTTIME = 19  # field 22
_DEAD_STATES = frozenset({"Z", "X"})  # zombie, dead: exited, only not yet reaped


def start_time(pid: int) -> float | None:
    """When `pid` started, in seconds after boot; None when there is no live process."""
    fields = _stat(pid)
    if fields is None or fields[_STATE] in _DEAD_STATES:
        return None
    return int(fields[_STARTTIME]) / CLOCK_TICKS


def is_running(pid: int, started: float) -> bool:
    """True when `pid` is alive and is the process that started at `started`."""
    now = start_time(pid)
    # Half a tick of slack: `started` may have been through a store as a float.
    return now is not None and abs(now - started) < 0.5 / CLOCK_TICKS


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # gone (or vanishing while we read)
        return None
    # Field 2 is the command name in parentheses; it may hold spaces and ")"
    # itself, so the fields we want start after the last ")".
    return raw[raw.rindex(b")") + 2 :].decode("ascii", "replace").split()


# -- listening sockets -----------------------------------------------------------
#
# Who listens on a port, from the kernel's own tables: sock_diag (netlink, as
# `ss -ltn` asks) or else /proc/net/tcp{,6} give each LISTEN socket's address,
# port, owner uid and inode; /proc/<pid>/fd links name the inodes a process
# holds ("socket:[12345]"). sock_diag first: it walks only listening sockets,
# where /proc/net/tcp walks every connection of the host (20 ms with 2,000 of
# them, and a gate asks several times a second).

_TCP_TABLES: Final = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN: Final = "0A"  # TCP_LISTEN in the `st` column
_PPID = 1  # field 4 of /proc/<pid>/stat
_PGRP = 2  # field 5


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening TCP socket of this network namespace."""

    address: IPv4Address | IPv6Address
    port: int
    uid: int
    inode: int


def listeners() -> list[Listener]:
    """Every LISTEN socket, IPv4 and IPv6; [] where the kernel tells none."""
    try:
        return _diag(socket.AF_INET) + _diag(socket.AF_INET6)
    except OSError:  # no netlink here (not Linux, or a sandbox refusing it)
        return _proc_listeners()


def _proc_listeners() -> list[Listener]:
    found: list[Listener] = []
    for table in _TCP_TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]  # after the header
        except OSError:  # no IPv6 in this kernel, or not Linux
            continue
        found += [listener for line in lines if (listener := _listener(line)) is not None]
    return found


def socket_inodes(pid: int) -> set[int] | None:
    """Inodes of the sockets `pid` holds; None when its fds are not ours to read
    (another user's process), an empty set when it is gone."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except PermissionError:
        return None
    except OSError:
        return set()
    inodes = set()
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (zombies hold no sockets)."""
    members = []
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None and fields[_STATE] not in _DEAD_STATES and int(fields[_PGRP]) == pgid:
            members.append(pid)
    return members


def holders(inodes: set[int]) -> list[int]:
    """Processes that hold any of `inodes`, among those whose fds we may read."""
    return [pid for pid in _pids() if (held := socket_inodes(pid)) and held & inodes]


def descends_from(pid: int, ancestor: int) -> bool:
    """True when `ancestor` is `pid` or one of its parents (a child that left
    the group with setsid is still the app's)."""
    seen = 0
    while pid > 1 and seen < 64:  # bounded: a pid may be reused under us
        if pid == ancestor:
            return True
        fields = _stat(pid)
        if fields is None:
            return False
        pid, seen = int(fields[_PPID]), seen + 1
    return False


def command_of(pid: int, limit: int = 80) -> str | None:
    """`pid`'s command line as one string (at most `limit` characters), or None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listener(line: str) -> Listener | None:
    fields = line.split()
    if len(fields) < 10 or fields[3] != _LISTEN:
        return None
    address, _, port = fields[1].partition(":")
    return Listener(_address(address), int(port, 16), int(fields[7]), int(fields[9]))


# sock_diag: one dump request per address family, for TCP sockets in LISTEN.
_NETLINK_SOCK_DIAG: Final = 4
_SOCK_DIAG_BY_FAMILY: Final = 20
_NLM_F_DUMP_REQUEST: Final = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN_BIT: Final = 1 << 10  # TCP_LISTEN = 10
_NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQUEST = struct.Struct("=BBBBI48x")  # family, protocol, ext, pad, states, sockid
# inet_diag_msg: family, state, timer, retrans, sport (big endian), dport,
# src, dst, interface, cookie, expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBB2s2x16s16x4x8x4x4x4xII")


def _diag(family: int) -> list[Listener]:
    request = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _TCP_LISTEN_BIT)
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, 1, 0
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(1.0)  # the kernel answers at once; never hang a gate on it
        sock.send(header + request)
        found: list[Listener] = []
        while True:
            data = sock.recv(65536)
            for kind, body in _messages(data):
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError("sock_diag refused the request")
                found.append(_diag_listener(family, body))


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    messages, offset = [], 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            break
        messages.append((kind, data[offset + _NLMSG_HEADER.size : offset + length]))
        offset += (length + 3) & ~3  # messages are 4-byte aligned
    return messages


def _diag_listener(family: int, body: bytes) -> Listener:
    fields = _DIAG_MSG.unpack_from(body)
    sport, src, uid, inode = fields[4:8]
    port = int.from_bytes(sport, "big")
    address = IPv4Address(src[:4]) if family == socket.AF_INET else IPv6Address(src)
    return Listener(address, port, uid, inode)


def _address(hex_address: str) -> IPv4Address | IPv6Address:
    # The kernel prints each 32-bit word of the address in host byte order.
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
