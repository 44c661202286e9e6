"""The upstream read timeout of the exchange a client connection is answering.

One per client connection, not per exchange: the connection answers one
exchange at a time, so they take turns on it, and a retry moves the same
deadline. Reads only store the time (`last_read`); the timer behind it
(timers.Deadline) is re-armed lazily when it fires, so a response of many
reads costs no timer operation per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol

from zerodown.proxy.phase import Phase
from zerodown.proxy.timers import Deadline

# A deadline re-armed for less than this would spin: the least wait.
MIN_REARM: Final = 0.05


class Watched(Protocol):
    """The exchange whose upstream reads are timed."""

    @property
    def phase(self) -> Phase: ...
    def read_timed_out(self) -> None:
        """No byte from the target for read_timeout: end the attempt."""


class ReadWatchdog:
    __slots__ = ("_check", "_deadline", "_loop", "_paused", "_timeout", "_watched", "last_read")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, paused: Callable[[], bool]
    ) -> None:
        self._loop = loop
        self._timeout = timeout  # read_timeout
        self._paused = paused  # is the client not taking our bytes (then the wait is ours)
        self._deadline = Deadline(loop)
        self._watched: Watched | None = None
        self._check = self._expired  # bound once: no bound-method object per request
        self.last_read = 0.0

    def __repr__(self) -> str:
        return f"<ReadWatchdog {self._watched!r} {self._deadline!r}>"

    def watch(self, watched: Watched) -> None:
        """Time `watched`'s reads from now (its request was just sent)."""
        self._watched = watched
        self.last_read = now = self._loop.time()
        self._deadline.set(now + self._timeout, self._check)

    def stop(self) -> None:
        """Nothing to time (the exchange ended, or became a tunnel, which may stay silent)."""
        self._watched = None
        self._deadline.clear()

    def cancel(self) -> None:
        """The client connection is gone: drop the timer too."""
        self._watched = None
        self._deadline.cancel()

    def _expired(self) -> None:
        watched = self._watched
        if watched is None:
            return
        phase = watched.phase
        if phase is not Phase.SENT and phase is not Phase.STREAMING:
            return  # the wait is over
        now = self._loop.time()
        idle_for = now - self.last_read
        # A client that stops reading pauses the upstream read: not the target's delay.
        if idle_for < self._timeout or (phase is Phase.STREAMING and self._paused()):
            self._deadline.set(now + max(self._timeout - idle_for, MIN_REARM), self._check)
            return
        self._watched = None
        watched.read_timed_out()
