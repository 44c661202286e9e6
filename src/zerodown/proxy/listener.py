"""Listening sockets: binding one for a configured address, and accepting
connections on it in batches.

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
import ssl
from collections.abc import Callable
from typing import Final

from zerodown.errors import ListenError
from zerodown.routing import parse_address

log = logging.getLogger("zerodown.proxy")

ACCEPT_BATCH: Final = 512  # per wake-up, so one busy listener cannot starve the loop
# Out of file descriptors: stop accepting for a moment instead of spinning on
# a listening socket that stays readable (the queue still holds the clients).
EMFILE_PAUSE: Final = 0.1
LISTEN_BACKLOG: Final = 4096


def bind_listener(address: str, *, reuse_port: bool = False, probe: bool = True) -> socket.socket:
    """A listening TCP socket for "host:port" (port 0 picks a free one);
    ListenError names the address if it cannot be bound.

    reuse_port: several sockets share the port and the kernel spreads new
    connections over them (the multi-worker supervisor's, dataplane/sockets.py).
    Off otherwise, so a second zerodown on a taken port fails loudly instead
    of silently sharing it. With reuse_port, a plain bind (no SO_REUSEPORT, no
    listen) first proves that no other process listens there; `probe=False`
    skips that only to add a sibling to a socket of our own on that port.
    """
    try:
        if reuse_port and probe and not address.endswith(":0"):
            _probe(address)
        return _bind(address, reuse_port=reuse_port)
    except OSError as exc:
        raise ListenError(address, exc) from exc


def _bind(address: str, *, reuse_port: bool) -> socket.socket:
    host, port = _split(address)
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _split(address: str) -> tuple[str, int]:
    if address.endswith(":0"):  # any free port: parse_address refuses 0 in a config
        return address[:-2].removeprefix("[").removesuffix("]"), 0
    return parse_address(address)


def _probe(address: str) -> None:
    host, port = parse_address(address)
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind((host, port))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Listener:
    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.sock = sock
        self.factory = protocol_factory
        self.loop = loop
        # Read per connection: a reloaded certificate (ProxyServer.reload_tls)
        # serves new connections while open ones keep the one they shook hands with.
        self.tls = tls
        self.handshake_timeout = handshake_timeout
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
            if self.tls is None:
                await self.loop.connect_accepted_socket(self.factory, conn)
            else:
                await self.loop.connect_accepted_socket(
                    self.factory, conn, ssl=self.tls, ssl_handshake_timeout=self.handshake_timeout
                )
        except OSError:  # SSLError and a handshake timeout too: the transport closed itself
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
