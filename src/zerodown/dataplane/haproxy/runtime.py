"""A client of HAProxy's runtime API (the stats and master unix sockets), and
typed parsers for what it answers.

One connection per command: HAProxy's CLI in its default (non-interactive)
mode answers one line of commands and closes, so a reply is everything read
until EOF. The parsers are pure and unit-tested on captured output.
"""

from __future__ import annotations

import asyncio
import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from zerodown.errors import DataPlaneDown, DataPlaneError

__all__ = [
    "ADMIN_DRAIN",
    "ADMIN_MAINT",
    "ProcEntry",
    "ServerRow",
    "StatRow",
    "backend_cache",
    "command",
    "frontend_sessions",
    "parse_proc",
    "parse_servers_state",
    "parse_stat",
    "reply_error",
]

COMMAND_TIMEOUT: Final = 5.0
ADMIN_MAINT: Final = 0x01 | 0x02 | 0x04 | 0x20  # forced, inherited, config, resolution
ADMIN_DRAIN: Final = 0x08 | 0x10  # forced, inherited
# What a successful verb answers; any other text is HAProxy saying why not.
_SUCCESS: Final = {"add server": "New server registered", "del server": "Server deleted"}


async def command(socket: Path, line: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Send one command line, return the whole reply; DataPlaneDown if the
    socket does not answer (HAProxy gone, or not started yet)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket))
            try:
                writer.write(line.encode() + b"\n")
                # The master CLI answers only once the input ends (the
                # worker's closes after one line either way).
                writer.write_eof()
                await writer.drain()
                data = await reader.read(-1)
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise DataPlaneDown(
            f"HAProxy's runtime API at {socket} did not answer {line.split()[0:2]}: {exc!r}; "
            "is haproxy running? its log is beside the socket"
        ) from exc
    return data.decode("utf-8", "replace")


def reply_error(line: str, reply: str) -> str | None:
    """HAProxy's complaint in `reply` to `line`, or None when it did it."""
    text = reply.strip()
    for verb, success in _SUCCESS.items():
        if line.startswith(verb):
            return None if success in text else text or "no answer"
    return text or None  # set/enable/shutdown answer nothing when they succeed


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One line of `show servers state` (format 1)."""

    backend: str
    name: str
    address: str  # the IP only; the port is a later column
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # mask: ADMIN_MAINT, ADMIN_DRAIN
    weight: int  # srv_uweight, what `set server ... weight` set

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & ADMIN_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & ADMIN_DRAIN)


def parse_servers_state(text: str) -> list[ServerRow]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        raise DataPlaneError(f"`show servers state` answered an unknown format: {text[:200]!r}")
    header = lines[1].lstrip("# ").split() if len(lines) > 1 else []
    rows = []
    for line in lines[2:]:
        if not line.strip() or line.startswith("#"):
            continue
        fields = dict(zip(header, line.split(), strict=False))
        rows.append(
            ServerRow(
                backend=fields["be_name"],
                name=fields["srv_name"],
                address=fields["srv_addr"],
                port=int(fields["srv_port"]),
                op_state=int(fields["srv_op_state"]),
                admin_state=int(fields["srv_admin_state"]),
                weight=int(fields["srv_uweight"]),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class StatRow:
    """The columns of one server's `show stat` line that Stats needs."""

    backend: str
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, NOLB, "UP 1/3", "no check", ...
    weight: int
    queued: int  # qcur
    sessions: int  # scur: in flight, WebSockets included
    total: int  # stot
    responses: tuple[int, int, int, int, int]  # hrsp_1xx .. hrsp_5xx
    connect_errors: int  # econ
    response_errors: int  # eresp
    retries: int  # wretr
    redispatches: int  # wredis
    down_transitions: int  # chkdown
    response_ms: int  # rtime: average over the last 1024 responses
    response_max_ms: int  # rtime_max
    total_ms: int  # ttime


def parse_stat(text: str) -> list[StatRow]:
    """Server lines of `show stat` (CSV headed by "# pxname,svname,...")."""
    if not text.startswith("# "):
        raise DataPlaneError(f"`show stat` answered no CSV header: {text[:200]!r}")
    reader = csv.DictReader(text[2:].splitlines())
    return [_stat_row(row) for row in reader if row.get("type") == "2"]


def _stat_row(row: dict[str, str]) -> StatRow:
    def n(key: str) -> int:
        return int(row.get(key) or 0)

    return StatRow(
        backend=row["pxname"],
        name=row["svname"],
        status=row["status"],
        weight=n("weight"),
        queued=n("qcur"),
        sessions=n("scur"),
        total=n("stot"),
        responses=(n("hrsp_1xx"), n("hrsp_2xx"), n("hrsp_3xx"), n("hrsp_4xx"), n("hrsp_5xx")),
        connect_errors=n("econ"),
        response_errors=n("eresp"),
        retries=n("wretr"),
        redispatches=n("wredis"),
        down_transitions=n("chkdown"),
        response_ms=n("rtime"),
        response_max_ms=n("rtime_max"),
        total_ms=n("ttime"),
    )


@dataclass(frozen=True, slots=True)
class ProcEntry:
    """One process of the master CLI's `show proc`."""

    pid: int
    kind: str  # master, worker
    reloads: int
    old: bool  # an old worker finishing its sessions after a reload
    failed: int = 0  # the master's failed reloads ("5 [failed: 1]")


def parse_proc(text: str) -> list[ProcEntry]:
    entries, old = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            old = "old workers" in line
            continue
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit():
            reloads = int(fields[2]) if fields[2].isdigit() else 0
            failed = re.search(r"\[failed: (\d+)\]", line)
            entries.append(
                ProcEntry(int(fields[0]), fields[1], reloads, old, int(failed[1]) if failed else 0)
            )
    return entries


def frontend_sessions(text: str) -> int:
    """Open client connections: the frontends' `scur` in `show stat`."""
    if not text.startswith("# "):
        return 0
    rows = csv.DictReader(text[2:].splitlines())
    return sum(int(row.get("scur") or 0) for row in rows if row.get("type") == "0")


def backend_cache(text: str) -> dict[str, tuple[int, int]]:
    """backend -> (cache lookups, cache hits): the backends' own counters in
    `show stat`, kept by HAProxy whether or not a request is logged."""
    if not text.startswith("# "):
        return {}
    rows = csv.DictReader(text[2:].splitlines())
    return {
        row["pxname"]: (int(row.get("cache_lookups") or 0), int(row.get("cache_hits") or 0))
        for row in rows
        if row.get("type") == "1"
    }
