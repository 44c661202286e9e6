"""Outbound notifications: each `[notify] webhooks` URL gets a JSON POST for
every deploy event that matters (notices.py says which, and what).

    webhooks = Webhooks(config.notify)
    webhooks.start(control.events, after=store.last_event_id())
    ...
    await webhooks.stop()      # sends what is queued, for a moment, then gives up

Never in a deploy's way: the follower reads the event stream like any other
subscriber, and each receiver has its own bounded queue and sender task, so
a slow or dead receiver delays only itself. A full queue drops its oldest
notification (the newest says most about now) and a warning counts the drops.
A POST that fails (no answer, or not 2xx) is retried after 1, 2, 4, ... times
`backoff`, up to `retries` times, then given up with a warning.

The POST itself is http.client in a worker thread: the standard library
(as the CLI's client), with TLS and certificate checks for https.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from zerodown import __version__
from zerodown.config.operate import NOTIFY_BACKOFF_MAX, NotifyConfig
from zerodown.control.notices import Notices
from zerodown.deploy.contract import EventView

__all__ = ["STOP_GRACE", "Receiver", "Webhooks", "post_json", "shown_url"]

log = logging.getLogger("zerodown.notify")

STOP_GRACE: Final = 2.0  # seconds a stopping daemon gives its queues to empty
EventSource = Callable[[int], AsyncIterator[EventView]]


def post_json(url: str, document: dict[str, Any], timeout: float) -> str | None:
    """POST `document` to `url`; None when it was taken (2xx), else why not. Blocking."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = json.dumps(document).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"zerodown/{__version__}"}
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        conn.close()
    if 200 <= response.status < 300:
        return None
    return f"HTTP {response.status} {response.reason}"


def shown_url(url: str) -> str:
    """`url` as logs may show it: a webhook's path is often its secret (Slack's is)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


class Receiver:
    """One webhook URL: its queue and the task that sends from it."""

    def __init__(self, url: str, config: NotifyConfig) -> None:
        self.url = url
        self.shown = shown_url(url)
        self.config = config
        self.queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.queue)
        self.dropped = 0
        self.sent = 0
        self.given_up = 0
        self._ready = asyncio.Event()
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"<Receiver {self.shown} queued={len(self.queue)} sent={self.sent} "
            f"dropped={self.dropped} given_up={self.given_up}>"
        )

    def put(self, document: dict[str, Any]) -> None:
        """Queue `document` at once; when full, the oldest waiting one goes."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
            log.warning(
                "notify %s: queue full (%d), dropped the oldest notification (%d dropped so far)",
                self.shown,
                self.config.queue,
                self.dropped,
            )
        self.queue.append(document)
        self._ready.set()

    def close(self) -> None:
        """Send what is queued, then end `run`."""
        self._closing = True
        self._ready.set()

    async def run(self) -> None:
        """Send queued documents, one at a time, in order, until closed or cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.queue:
                await self._deliver(self.queue.popleft())
            if self._closing:
                return

    async def _deliver(self, document: dict[str, Any]) -> None:
        config = self.config
        for attempt in range(config.retries + 1):
            if attempt:
                await asyncio.sleep(min(config.backoff * 2 ** (attempt - 1), NOTIFY_BACKOFF_MAX))
            problem = await asyncio.to_thread(post_json, self.url, document, config.timeout)
            if problem is None:
                self.sent += 1
                return
            log.info("notify %s: try %d failed: %s", self.shown, attempt + 1, problem)
        self.given_up += 1
        log.warning(
            "notify %s: gave up on %s of deploy %s after %d tries: %s",
            self.shown,
            document.get("event"),
            document.get("deploy_id"),
            config.retries + 1,
            problem,
        )


class Webhooks:
    """The receivers of `[notify] webhooks`, fed from the event stream."""

    def __init__(self, config: NotifyConfig) -> None:
        self.receivers = [Receiver(url, config) for url in config.webhooks]
        self.notices = Notices()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, events: EventSource, after: int) -> None:
        """Follow `events(after)` and send; nothing at all without a receiver."""
        if not self.receivers:
            return
        self._tasks = [asyncio.ensure_future(r.run()) for r in self.receivers]
        self._tasks.append(asyncio.ensure_future(self._follow(events, after)))

    def publish(self, event: EventView) -> None:
        """Queue the notification `event` makes, if any, for every receiver."""
        document = self.notices.on(event)
        if document is not None:
            for receiver in self.receivers:
                receiver.put(document)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Let the queues empty for up to `grace` seconds, then stop sending."""
        if not self._tasks:
            return
        *senders, follower = self._tasks
        follower.cancel()
        for receiver in self.receivers:
            receiver.close()
        await asyncio.wait(senders, timeout=grace)
        for task in self._tasks:
            task.cancel()  # a receiver still retrying: its notification is lost
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _follow(self, events: EventSource, after: int) -> None:
        """Read the stream from `after`; it ends when this subscriber fell behind,
        and is then read again from the last event seen."""
        last = after
        while True:
            stream = events(last)
            try:
                async for event in stream:
                    last = max(last, event.id)
                    self.publish(event)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            await asyncio.sleep(0.1)  # the stream ended: not a busy loop if it ends at once
