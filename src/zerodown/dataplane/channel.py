"""The control channel between the supervisor and one proxy worker.

One Unix stream socket (a socketpair made before the worker starts), JSON
lines both ways, the same code at both ends. Three kinds of message:

    {"id": 7, "op": "apply", ...}    a request; the other end replies
    {"re": 7, "result": ...}         the reply ({"re": 7, "error": "..."} on failure)
    {"op": "health", ...}            a notice: no id, no reply

A handler that returns a plain value runs inline, so requests and notices
are applied in the order they were sent (a table before the health of its
new targets); one that returns a coroutine (drain, stop) runs as a task and
replies when it ends, so a long drain does not hold up the next table.

Only the control plane travels here, never a request: a table change, a
health verdict, a drain, a stats snapshot, a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

from zerodown.errors import DataPlaneDown

log = logging.getLogger("zerodown.dataplane")

# A whole routing table or stats snapshot is one line; big fleets make big lines.
LINE_LIMIT: Final = 64 * 1024 * 1024

Message = dict[str, Any]
Handler = Callable[[str, Message], Any]


class ChannelClosed(DataPlaneDown, ConnectionError):
    """The other end went away (exited, crashed, or closed the channel).

    A DataPlaneDown, so that a controller whose host died meets a typed error
    it may wait out (dataplane/restarts.py), never a traceback; a
    ConnectionError still, for the code that reads the channel."""


class RemoteError(RuntimeError):
    """The other end's handler raised; the message is its error text."""


class Channel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @classmethod
    async def over(cls, sock: socket.socket, handler: Handler) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer, handler)

    def __repr__(self) -> str:
        return f"<Channel waiting={len(self._waiting)} closed={self.closed}>"

    # -- sending -------------------------------------------------------------

    async def request(self, op: str, wait: float, **fields: Any) -> Any:
        """Send a request and wait for its reply; ChannelClosed, RemoteError or TimeoutError."""
        if self.closed:
            raise ChannelClosed(f"channel closed before {op!r}")
        ident = next(self._ids)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = reply
        try:
            self._send({"id": ident, "op": op, **fields})
            async with asyncio.timeout(wait):
                return await reply
        finally:
            self._waiting.pop(ident, None)

    def notify(self, op: str, **fields: Any) -> None:
        """Send a notice; dropped silently when the channel is closed (the peer is gone)."""
        if not self.closed:
            self._send({"op": op, **fields})

    def _send(self, message: Message) -> None:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            self._writer.write(line)
        except (ConnectionError, RuntimeError) as exc:
            self._close(exc)

    # -- receiving -----------------------------------------------------------

    async def serve(self) -> None:
        """Read and dispatch until the other end goes away; then fail what waits."""
        try:
            while line := await self._reader.readline():
                self._dispatch(json.loads(line))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            self._close(exc)
        else:
            self._close(None)

    def _dispatch(self, message: Message) -> None:
        if "re" in message:
            reply = self._waiting.get(message["re"])
            if reply is not None and not reply.done():
                if "error" in message:
                    reply.set_exception(RemoteError(message["error"]))
                else:
                    reply.set_result(message.get("result"))
            return
        ident = message.get("id")
        try:
            result = self._handler(message["op"], message)
        except Exception as exc:  # noqa: BLE001 - the handler's failure is the requester's to see
            log.debug("%s failed: %s", message.get("op"), exc)
            if ident is not None:
                self._send({"re": ident, "error": f"{type(exc).__name__}: {exc}"})
            return
        if inspect.iscoroutine(result):
            task = asyncio.get_running_loop().create_task(self._finish(ident, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif ident is not None:
            self._send({"re": ident, "result": result})

    async def _finish(self, ident: int | None, work: Any) -> None:
        try:
            result = await work
        except Exception as exc:  # noqa: BLE001 - as in _dispatch: the requester sees it
            if ident is not None:
                self._send({"re": ident, "error": f"{type(exc).__name__}: {exc}"})
            return
        if ident is not None:
            self._send({"re": ident, "result": result})

    async def flush(self) -> None:
        """Wait until what was sent has left (before a worker exits)."""
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._close(None)

    def _close(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        reason = f"channel closed: {exc}" if exc else "channel closed"
        for reply in self._waiting.values():
            if not reply.done():
                reply.set_exception(ChannelClosed(reason))
        self._writer.close()
