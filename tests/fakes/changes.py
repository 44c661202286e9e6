"""Waiting for a fake's record to change, without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WAIT = 5.0  # seconds: no test waits longer than this for anything (all expect milliseconds)


class Changes:
    """A fake calls `notify()` whenever its record changes; a test awaits
    `until(check)`, which re-checks on every change until the deadline."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        # A fresh event per change: whoever waits on the old one wakes, nobody
        # has to clear it (and so miss a change made meanwhile).
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def until(self, check: Callable[[], bool], what: str, within: float = WAIT) -> None:
        """Return once `check()` holds; fail the test if it does not `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while not check():
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}") from None
