"""The admin API's event stream, read in a thread, kept open across reconnects.

    feed = EventFeed(client, "web")
    event = feed.next(timeout=0.5)   # an EventView dict, or None when none came in time
    feed.close()

A stream that ends or breaks (the daemon restarted, a proxy in between cut
it) is opened again after the last event id seen, so nothing is missed or
seen twice, after RECONNECT_BACKOFF, doubling, up to RECONNECTS times in a
row. Then, or at once when the daemon refuses the stream (an HTTP error
other than no answer), `next` raises StreamLost: the caller goes back to
polling, which says plainly whether the daemon is there.
"""

from __future__ import annotations

import queue
import threading
from typing import Final

from zerodown.cli.client import AdminClient, AdminError, AdminUnreachable, EventStream
from zerodown.deploy.contract import JsonView as View
from zerodown.errors import ZerodownError

__all__ = ["RECONNECTS", "RECONNECT_BACKOFF", "EventFeed", "StreamLost"]

RECONNECTS: Final = 5  # 0.2 + 0.4 + ... + 3.2 s: a hot restart of the daemon fits
RECONNECT_BACKOFF: Final = 0.2
_JOIN_TIMEOUT: Final = 2.0


class StreamLost(ZerodownError):
    """The event stream could not be kept open; the message says why."""


class EventFeed:
    """EventView dicts of one service (or all), from a reader thread."""

    def __init__(self, client: AdminClient, service: str | None = None, after: int = 0) -> None:
        self.client = client
        self.service = service
        self.last_id = after
        self.connects = 0
        self._queue: queue.Queue[View | StreamLost] = queue.Queue()
        self._closed = threading.Event()
        self._stream: EventStream | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="zerodown-events", daemon=True)
        self._thread.start()

    def next(self, timeout: float) -> View | None:
        """The next event, or None if none came within `timeout`. Raises StreamLost."""
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(item, StreamLost):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        self._thread.join(_JOIN_TIMEOUT)

    def _read(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                heard = self._follow()
                reason = "the event stream ended"
            except AdminUnreachable as exc:
                heard, reason = False, exc.message
            except AdminError as exc:  # refused: asking again gets the same answer
                self._queue.put(StreamLost(f"event stream refused: {exc.message}"))
                return
            failures = 0 if heard else failures + 1
            if failures > RECONNECTS:
                self._queue.put(StreamLost(reason))
                return
            self._closed.wait(RECONNECT_BACKOFF * 2 ** max(0, failures - 1))

    def _follow(self) -> bool:
        """Read one connection to its end; True if it brought an event."""
        stream = self.client.event_stream(self.last_id, self.service)
        with self._lock:
            self._stream = stream
        if self._closed.is_set():  # closed while connecting: close() missed this stream
            stream.close()
        self.connects += 1
        heard = False
        for event in stream:
            self.last_id = max(self.last_id, int(event["id"]))
            self._queue.put(event)
            heard = True
        return heard
