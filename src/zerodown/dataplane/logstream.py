"""A loopback TCP socket a proxy streams its log lines to, read in batches.

HAProxy writes one line per request (haproxy/latency.py) into a ring
buffer in its own memory, and the ring's forwarder streams the lines over
TCP, one per `\\n` (`format raw`). Against one UDP datagram per request,
the controller, which shares a core with HAProxy, no longer wakes up and
calls recv per request: it reads at most every READ_INTERVAL, whatever
the kernel has queued (thousands of lines in one recv), and hands whole
lines to `on_lines`. Nothing is sampled: every request's line arrives,
at any rate (bench/logcost.py measures the per-line cost).

If the driver reads too slowly, TCP pushes back and the ring overwrites
its oldest lines: HAProxy never waits on the driver. Each line carries
LogTarget.key, as the datagrams did: a connection from another local
process sending lines without it is counted as foreign and ignored.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable
from typing import Final

from zerodown.dataplane.accesslog import LOG_RECEIVE_BUFFER, LogTarget

__all__ = ["READ_INTERVAL", "LogStream"]

READ_INTERVAL: Final = 0.05  # at most 20 reads a second a connection, each of all that is queued
READ_SIZE: Final = 1024 * 1024
# One connection per HAProxy process with the ring: the live worker, and
# old ones finishing their connections after reloads.
MAX_CONNECTIONS: Final = 32


class LogStream:
    """A listening socket on 127.0.0.1; each connection's whole lines to `on_lines`."""

    def __init__(self, on_lines: Callable[[bytes], None]) -> None:
        self.on_lines = on_lines
        self.target = LogTarget("")
        self._listener: socket.socket | None = None
        self._connections: dict[int, tuple[socket.socket, bytearray]] = {}
        self._paused: dict[int, asyncio.TimerHandle] = {}  # fd -> when it is read again

    def __repr__(self) -> str:
        return f"<LogStream {self.target.server or 'closed'} connections={len(self._connections)}>"

    def open(self, saved: LogTarget | None) -> LogTarget:
        """Listen where the last driver did (its key too) if free, so an adopted
        proxy reconnects here without a reload."""
        key = saved.key if saved is not None and saved.key.isalnum() else secrets.token_hex(8)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", _port(saved)))
        except OSError:
            listener.bind(("127.0.0.1", 0))  # taken: the proxy is told the new one
        listener.listen(16)
        listener.setblocking(False)
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        self._listener = listener
        self.target = LogTarget(f"tcp:127.0.0.1:{listener.getsockname()[1]}", key)
        return self.target

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for timer in self._paused.values():
            timer.cancel()
        self._paused.clear()
        for fd, (conn, _) in list(self._connections.items()):
            loop.remove_reader(fd)
            conn.close()
        self._connections.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            loop.remove_reader(listener.fileno())
            listener.close()

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                conn.close()  # HAProxy needs one a process; this is someone else
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LOG_RECEIVE_BUFFER)
            self._connections[conn.fileno()] = (conn, bytearray())
            asyncio.get_running_loop().add_reader(conn.fileno(), self._read, conn.fileno())

    def _read(self, fd: int) -> None:
        conn, tail = self._connections[fd]
        closed = False
        while True:
            try:
                chunk = conn.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                closed = True
                break
            tail += chunk
        cut = tail.rfind(b"\n") + 1
        if cut:
            lines = bytes(tail[:cut])
            del tail[:cut]
            self.on_lines(lines)
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        if closed:
            del self._connections[fd]
            conn.close()
            return
        # Not again before READ_INTERVAL: what arrives meanwhile is read in one go.
        self._paused[fd] = loop.call_later(READ_INTERVAL, self._resume, fd)

    def _resume(self, fd: int) -> None:
        del self._paused[fd]
        asyncio.get_running_loop().add_reader(fd, self._read, fd)


def _port(saved: LogTarget | None) -> int:
    if saved is None or not saved.server.startswith("tcp:127.0.0.1:"):
        return 0
    return int(saved.server.rpartition(":")[2])
