"""What the daemon does beside deploys: prune the event history, send notifications.

    upkeep = Upkeep(config, store, control)
    upkeep.start()          # after the orchestrator started
    ...
    await upkeep.stop()     # after the orchestrator closed: its last events still go out

The events table would grow by every step of every deploy forever; it is
pruned at start and every PRUNE_INTERVAL by `[events] max_age` and
`max_count`. Deploys, journals and releases are not touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from zerodown.config import Config
from zerodown.config.operate import EventsConfig
from zerodown.control.webhooks import Webhooks
from zerodown.deploy.contract import ControlPlane
from zerodown.store.base import Store, StoreError

__all__ = ["PRUNE_INTERVAL", "Upkeep", "prune_events"]

log = logging.getLogger("zerodown.daemon")

PRUNE_INTERVAL: Final = 3600.0  # seconds; a day's events are a small delete


def prune_events(store: Store, config: EventsConfig, now: float) -> int:
    """Delete the events `config` does not keep at `now`; how many went (0 on a store error)."""
    try:
        removed = store.prune_events(now - config.max_age, config.max_count)
    except StoreError as exc:
        # History, not state: a failed prune is tried again at the next interval.
        log.warning("pruning the event history failed: %s", exc)
        return 0
    if removed:
        log.info("pruned %d old events (keeping %s)", removed, _kept(config))
    return removed


class Upkeep:
    def __init__(
        self,
        config: Config,
        store: Store,
        control: ControlPlane,
        *,
        interval: float = PRUNE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.control = control
        self.interval = interval
        self.clock = clock
        self.webhooks = Webhooks(config.notify)
        self._pruning: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pruning = asyncio.ensure_future(self._prune_forever())
        # From the newest event on: a restart does not announce old deploys again.
        self.webhooks.start(lambda after: self.control.events(after), self.store.last_event_id())

    async def stop(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            await asyncio.gather(self._pruning, return_exceptions=True)
            self._pruning = None
        await self.webhooks.stop()

    async def _prune_forever(self) -> None:
        while True:
            prune_events(self.store, self.config.events, self.clock())
            await asyncio.sleep(self.interval)


def _kept(config: EventsConfig) -> str:
    return f"{config.max_age / 86400:g} days, at most {config.max_count}"
