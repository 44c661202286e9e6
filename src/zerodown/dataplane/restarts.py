"""Asking a data plane that is being started again.

Every managed data plane has a watcher that starts its proxy again when the
process dies (HAProxy's and nginx's `watch`, the embedded host's keeper in
detached.py), on the table in force. While it does, a call finds no socket or
channel and raises DataPlaneDown. A deploy step that meets this should wait
for the proxy, as an operator would, not fail at once and then fail its
rollback the same way: `through_restarts` asks again until the proxy is back,
bounded by RESTART_DEADLINE. Any other DataPlaneError (a refused table) is
raised at once: asking again would be refused again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from zerodown.errors import DataPlaneDown

__all__ = ["RESTART_DEADLINE", "RETRY_EVERY", "through_restarts"]

log = logging.getLogger("zerodown.dataplane")

# The watchers look every 0.5-1 s and a proxy serves within ~2 s of its
# start (HAProxy, nginx, the embedded host): 10 s leaves room for a loaded
# machine and one failed try, and still ends a deploy whose proxy stays dead.
RESTART_DEADLINE: Final = 10.0
RETRY_EVERY: Final = 0.2  # between tries: a restarted proxy is met within this

T = TypeVar("T")


async def through_restarts(
    what: str,
    call: Callable[[], Awaitable[T]],
    deadline: float | None = None,
    every: float | None = None,
) -> T:
    """`call()`, asked again while it raises DataPlaneDown, up to `deadline`
    seconds (RESTART_DEADLINE), every `every` (RETRY_EVERY).

    The last DataPlaneDown is raised when the proxy is not back in time."""
    deadline = RESTART_DEADLINE if deadline is None else deadline
    every = RETRY_EVERY if every is None else every
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    first: DataPlaneDown | None = None
    while True:
        try:
            result = await call()
        except DataPlaneDown as exc:
            if loop.time() + every > give_up:
                raise
            if first is None:
                first = exc
                log.warning("%s: the data plane is down (%s); waiting for its restart", what, exc)
            await asyncio.sleep(every)
            continue
        if first is not None:
            log.info("%s: done once the data plane was back", what)
        return result
