"""Deploy events: written to the store (so `status` and a reconnecting client
can read the past) and pushed to live subscribers (the SSE stream)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from zerodown.deploy.contract import EventView
from zerodown.store.base import EventRecord, Store, StoreError

SUBSCRIBER_BACKLOG = 1000  # events a slow subscriber may fall behind before it is dropped

log = logging.getLogger("zerodown.deploy")


def event_view(record: EventRecord) -> EventView:
    return EventView(
        id=record.id,
        service=record.service,
        deploy_id=record.deploy_id,
        kind=record.kind,
        data=json.loads(record.data_json),
        at=record.at,
    )


class EventBus:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._subscribers: set[asyncio.Queue[EventView | None]] = set()
        self._last_id = 0

    def publish(self, service: str, deploy_id: int | None, kind: str, **data: Any) -> None:
        """Store the event and push it to live subscribers.

        Events are history, not state: when the store fails, the event is
        logged and still pushed (with the next id in memory), and whatever
        published it goes on. A stream resumed later will not see it.
        """
        try:
            event_id = self.store.add_event(service, deploy_id, kind, json.dumps(data))
        except StoreError as exc:
            log.error("event %s of %s not stored: %s", kind, service, exc)
            event_id = self._last_id + 1
        self._last_id = max(self._last_id, event_id)
        record = EventRecord(event_id, service, deploy_id, kind, json.dumps(data), time.time())
        view = event_view(record)
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_BACKLOG:
                self._subscribers.discard(queue)
                queue.put_nowait(None)  # tell it that it fell behind
            else:
                queue.put_nowait(view)

    async def follow(self, after: int = 0, service: str | None = None) -> AsyncIterator[EventView]:
        """Stored events after `after`, then live ones, with no gap between."""
        queue: asyncio.Queue[EventView | None] = asyncio.Queue()
        self._subscribers.add(queue)  # subscribe first: nothing published meanwhile is lost
        try:
            last = after
            for record in self.store.events(after, service):
                last = record.id
                yield event_view(record)
            while True:
                view = await queue.get()
                if view is None:
                    return
                if view.id > last and (service is None or view.service == service):
                    last = view.id
                    yield view
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self._subscribers):
            queue.put_nowait(None)
        self._subscribers.clear()
