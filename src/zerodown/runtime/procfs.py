"""Is this pid still the process we started? Answered from /proc (Linux).

A pid alone is not an identity: after the process exits the kernel hands the
number to the next process that asks. The pair (pid, start time) is, since a
start time does not change over a process's life (exec included) and two
processes cannot hold the same pid at the same clock tick.
"""

from __future__ import annotations

import os
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
