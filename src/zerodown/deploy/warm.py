"""Warm releases: after a blue-green switch the old release stays up, out of
traffic, for `blue_green.scale_down_delay`, so that a rollback can switch
back at once instead of starting it again. When the window ends it is
retired (stopped), unless it serves again by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from zerodown.deploy.fleet import Fleet
from zerodown.release import Instance

RETIRE_RETRY = 1.0  # seconds before a warm release's stop is tried again while a deploy runs

StopInstances = Callable[[Fleet, list[Instance]], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, Any]], object]


class WarmReleases:
    def __init__(self, stop: StopInstances, deploying: Callable[[str], bool], spawn: Spawn) -> None:
        self._stop = stop
        self._deploying = deploying
        self._spawn = spawn
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def __repr__(self) -> str:
        return f"<WarmReleases {sorted(self._timers)}>"

    def keep(self, fleet: Fleet, version: str, seconds: float) -> None:
        """`version` stays up for `seconds`, then is retired."""
        loop = asyncio.get_running_loop()
        self._timers[(fleet.name, version)] = loop.call_later(
            seconds, lambda: self._spawn(self._retire(fleet, version))
        )

    def cancel(self, fleet: Fleet, version: str) -> None:
        """Keep it for good (a rollback took it back): no retirement."""
        handle = self._timers.pop((fleet.name, version), None)
        if handle is not None:
            handle.cancel()

    def holds(self, service: str, version: str) -> bool:
        """True while `version` of `service` is kept warm (its window has not ended)."""
        return (service, version) in self._timers

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    async def _retire(self, fleet: Fleet, version: str) -> None:
        self._timers.pop((fleet.name, version), None)
        if version == fleet.current:
            return  # rolled back to it since: it serves again
        if self._deploying(fleet.name):
            # A deploy (perhaps a rollback to this very release) decides now; look again later.
            self.keep(fleet, version, RETIRE_RETRY)
            return
        idle = [i for i in fleet.of_version(version) if i.id not in fleet.routed]
        await self._stop(fleet, idle)
