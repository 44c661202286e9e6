"""Workers whose master died alone (`kill -9` of the master, an OOM kill).

nginx's workers do not die with their master: they serve on, the old table,
holding the listening sockets, so a new master cannot bind ("Address already
in use") and the driver could never start one. They are found by process
group: the daemonized master calls setsid(), so its pid is its workers'
group id, and the group outlives its leader.

Before a new master starts, they are asked to quit as after a reload
(SIGQUIT: they close their listeners at once, finish the requests they hold,
up to worker_shutdown_timeout), and killed at that deadline if still there.
The choice against `reuseport` (a new master binding beside them): the
listen lines would change for every user, and closing a reuseport socket
resets the connections queued on it, where SIGQUIT loses only the short gap
until the new master listens, which nginx's own bind retries bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Final

from zerodown.dataplane.nginx import process

__all__ = ["LISTENERS_CLOSED", "Orphans"]

log = logging.getLogger("zerodown.dataplane.nginx")

LISTENERS_CLOSED: Final = 2.0  # for quitting workers to let go of the port (they do at once)


class Orphans:
    """The orphaned workers asked to quit, each with the time it is killed at."""

    def __init__(self, grace: float) -> None:
        self.grace = grace  # worker_shutdown_timeout: what a quitting worker is allowed
        self.pids: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"<Orphans {sorted(self.pids)}>"

    async def quit(self, master: int) -> None:
        """SIGQUIT the workers left by dead `master`; return once they closed
        their listening sockets (gone, or retitled "shutting down")."""
        found = process.group(master) - {master}
        if not found:
            return
        log.warning("nginx master %d died alone; its workers %s are told to quit", master, found)
        deadline = time.monotonic() + self.grace
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            self.pids[pid] = deadline
        loop = asyncio.get_running_loop()
        until = loop.time() + LISTENERS_CLOSED
        while any(process.alive(p) and not process.shutting_down(p) for p in found):
            if loop.time() >= until:
                break  # the launch then meets a busy port and says so
            await asyncio.sleep(process.POLL)

    def reap(self, now: float | None = None) -> None:
        """Forget the ones gone; SIGKILL the ones past their deadline."""
        now = time.monotonic() if now is None else now
        for pid, deadline in list(self.pids.items()):
            if process.alive(pid) and now >= deadline:
                log.warning("nginx worker %d still there at worker_shutdown_timeout: killed", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            elif process.alive(pid):
                continue
            del self.pids[pid]
