"""Telling a service manager (systemd's `Type=notify`) what the daemon is doing.

systemd passes a datagram socket in NOTIFY_SOCKET; we send `READY=1` once
serving, `STOPPING=1` when a stop begins, and, from a hot restart's new
generation, `MAINPID=<pid>` first: the old generation that systemd started
is about to exit, and without it systemd would take that exit for the end
of the service and kill the new one with the rest of the unit. (The unit
needs `NotifyAccess=all`, since the new generation is not the pid systemd
started.) Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import os
import socket
from typing import Final

NOTIFY_ENV: Final = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send `fields` as one message; True when a service manager listens."""
    address = os.environ.get(NOTIFY_ENV)
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # Linux abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError:  # a manager that went away is not our failure
            return False
    return True


def ready(*, successor: bool) -> bool:
    """We serve; a hot restart's new generation also names itself the main process."""
    if successor:
        return notify(f"MAINPID={os.getpid()}", "READY=1")
    return notify("READY=1")


def stopping() -> bool:
    return notify("STOPPING=1")
