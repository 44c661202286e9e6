"""Deadlines moved far more often than they fire (timeouts on the hot path)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """A timeout that is moved far more often than it fires.

    Arming and cancelling a loop timer per request costs a timer handle each
    time (uvloop: an allocation and a libuv start/close, ~1 µs). Here moving
    the deadline is a float store: the one timer behind it fires at or before
    `when`, and only then, finding the deadline moved later or cleared, is it
    re-armed or dropped. Invariant: a pending timer never fires after `when`.
    """

    __slots__ = ("_at", "_callback", "_handle", "_loop", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._callback: Callable[[], object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the pending timer fires
        self.when = 0.0  # 0.0: no deadline

    def __repr__(self) -> str:
        return f"<Deadline when={self.when:.3f} timer={self._handle is not None}>"

    def set(self, when: float, callback: Callable[[], object]) -> None:
        """Call `callback` at `when` (loop time) unless set or cleared before."""
        self.when = when
        self._callback = callback
        if self._handle is None or when < self._at:
            self._schedule(when)

    def clear(self) -> None:
        """No deadline; a pending timer stays, to find nothing to do."""
        self.when = 0.0
        self._callback = None

    def cancel(self) -> None:
        """No deadline and no timer: for a connection that is gone."""
        self.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        callback = self._callback
        if callback is None:
            return
        # uvloop keeps time in milliseconds, so a timer may fire up to 1 ms
        # early: firing then, not re-arming in a loop, is what it meant.
        if self._loop.time() < self.when - 0.001:
            self._schedule(self.when)
            return
        self.clear()
        callback()
