"""Accepting connections in batches.

uvloop accepts one connection per loop iteration: when a deploy or a proxy
restart makes 1,000 clients reconnect at once, the accept queue then drains
at tens of connections per second and clients time out. A Listener accepts
until EAGAIN (up to ACCEPT_BATCH) on each wake-up and hands every socket to
the loop with connect_accepted_socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Final

log = logging.getLogger("zerodown.proxy")

ACCEPT_BATCH: Final = 512  # per wake-up, so one busy listener cannot starve the loop
# Out of file descriptors: stop accepting for a moment instead of spinning on
# a listening socket that stays readable (the queue still holds the clients).
EMFILE_PAUSE: Final = 0.1


class Listener:
    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.sock = sock
        self.factory = protocol_factory
        self.loop = loop
        self._handing_over: set[asyncio.Task[object]] = set()
        self._listening = False

    def __repr__(self) -> str:
        return f"<Listener {self.sock.getsockname()} listening={self._listening}>"

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept_ready)
        self._listening = True

    def stop(self) -> None:
        """Stop accepting; the socket stays open (a hot restart may hand it on)."""
        if self._listening:
            self.loop.remove_reader(self.sock.fileno())
            self._listening = False

    def close(self) -> None:
        self.stop()
        self.sock.close()

    def _accept_ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small responses go at once
        task = self.loop.create_task(self._connect(conn))
        self._handing_over.add(task)
        task.add_done_callback(self._handing_over.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()  # the client left before we got to it

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log.warning("accept: %s; pausing accepts for %gs", exc, EMFILE_PAUSE)
            self.stop()
            self.loop.call_later(EMFILE_PAUSE, self._resume)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
            log.error("accept failed: %s", exc)

    def _resume(self) -> None:
        if not self._listening and self.sock.fileno() != -1:
            self.start()
