"""The request body of one exchange: held until an attempt can take it, framed
for the upstream, bounded by max_body_size, and kept for a replay while small.

Pure: no I/O. The exchange decides when bytes go out (an attempt's head is
on the wire) and tells the client connection to stop reading when `feed`
says the buffer is past its high-water mark. A request without a body has
no RequestBody at all (the exchange holds None), so a GET allocates nothing.
"""

from __future__ import annotations

import collections
from typing import Final

from zerodown.errors import BadRequest
from zerodown.proxy import http

# A request body up to this size is kept after sending, so an idempotent
# request can be replayed on another target; larger ones are not retried.
REPLAY_LIMIT: Final = 64 * 1024
# Buffered request body before we stop reading from the client.
BODY_HIGH_WATER: Final = 64 * 1024


class RequestBody:
    __slots__ = (
        "_pending",
        "_pending_size",
        "_replay",
        "_replay_size",
        "chunked",
        "continue_sent",
        "done",
        "expect_continue",
        "limit",
        "received",
    )

    def __init__(self, head: http.RequestHead, limit: int) -> None:
        self.chunked = head.chunked  # re-chunked upstream as it was framed
        self.expect_continue = head.expect_continue
        self.limit = limit  # max_body_size; 0: none
        self.done = False
        self.received = 0
        self.continue_sent = False
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_size = 0
        # What was sent, for a replay; None once it cannot be (too big, or
        # a method that must never be repeated).
        self._replay: list[bytes] | None = [] if head.idempotent else None
        self._replay_size = 0

    def __repr__(self) -> str:
        return (
            f"<RequestBody received={self.received} pending={self._pending_size} "
            f"done={self.done} replayable={self.replayable}>"
        )

    @property
    def replayable(self) -> bool:
        """May a new attempt send this body again (all of it is still held)?"""
        return self._replay is not None

    def feed(self, data: bytes) -> bool:
        """Hold `data` until sent; True when the client should stop sending for now."""
        self.received += len(data)
        if self.limit and self.received > self.limit:
            raise BadRequest("request body too large", status=413)
        self._pending.append(data)
        self._pending_size += len(data)
        return self._pending_size > BODY_HIGH_WATER

    def end(self) -> None:
        self.done = True

    def discard(self) -> None:
        """The client broke protocol mid-body: nothing more of it may be sent."""
        self._pending.clear()
        self._pending_size = 0
        self._replay = None

    def continue_due(self) -> bool:
        """Should the client get its 100 Continue now (once, and only while it waits)?"""
        if self.expect_continue and not self.continue_sent and not self.done:
            self.continue_sent = True
            return True
        return False

    def replay(self) -> list[bytes]:
        """What earlier attempts sent, framed again for a new one."""
        parts: list[bytes] = []
        for piece in self._replay or ():
            parts += self._frame(piece)
        return parts

    def take(self) -> list[bytes]:
        """The unsent body, framed for the upstream, and kept for a replay."""
        parts: list[bytes] = []
        pending = self._pending
        while pending:
            piece = pending.popleft()
            parts += self._frame(piece)
            self._keep(piece)
        self._pending_size = 0
        if self.done and self.chunked:
            parts.append(http.LAST_CHUNK)
        return parts

    def _frame(self, piece: bytes) -> list[bytes]:
        return http.chunk(piece) if self.chunked else [piece]

    def _keep(self, piece: bytes) -> None:
        if self._replay is None:
            return
        self._replay_size += len(piece)
        if self._replay_size > REPLAY_LIMIT:
            self._replay = None  # too big to hold: no longer retryable once sent
        else:
            self._replay.append(piece)
