"""nginx's buffered access log file, read by the driver in large chunks.

One log datagram per request cost the controller a wakeup, a recv and a
JSON parse per request (about 15 µs a line on a busy 2-core machine), on
the same core as nginx, whose own cost is 13-17 µs a request: zerodown
drove nginx at 0.4-0.7x of plain nginx's requests/s. With
`access_log <file> buffer=64k flush=250ms`, nginx writes 64 KiB of lines
at once (hundreds of requests), and the driver reads the file every
READ_INTERVAL and before each stats() in 1 MiB reads, and counts it by
distinct line (accesslog.AccessCounters.feed_lines).

The file is created here, mode 0600 in state_dir, before nginx opens it
(nginx appends to an existing file and keeps its mode). Only its owner
(or root) can write it, and those could rewrite nginx's config anyway; the
lines still carry LogTarget.key, which costs nothing here (it is the same
in every line, so it never adds a distinct line) and keeps a line from a
mis-owned or shared state_dir, or an old nginx, from being counted.

Rotation: past ROTATE_BYTES the file is renamed to `access.log.1` (the one
before is gone), a new empty file made in its place, and the master sent
SIGUSR1: nginx's `reopen`. Workers flush their buffer to the file they
have (the renamed one: a rename keeps the inode) and then open the new
one. The driver reads both until the old one has been quiet for
OLD_GRACE, so no line is lost. Truncating in place could lose the lines
written between the last read and the truncate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from zerodown.dataplane.accesslog import LogTarget

__all__ = ["FILE_BUFFER", "FILE_FLUSH", "LogFile"]

log = logging.getLogger(__name__)

FILE_BUFFER: Final = "64k"  # nginx's buffer per worker: one write per this many bytes
FILE_FLUSH: Final = "250ms"  # ... or after this long, so low traffic is counted soon
READ_INTERVAL: Final = 0.25
READ_SIZE: Final = 1024 * 1024
ROTATE_BYTES: Final = 32 * 1024 * 1024
OLD_GRACE: Final = 5.0  # workers reopen on SIGUSR1 within this, flushing first


class _Reader:
    """One open log file: where reading got to, and a line cut at its end."""

    def __init__(self, path: Path, at_end: bool) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = os.lseek(self.fd, 0, os.SEEK_END) if at_end else 0
        self.tail = b""
        self.quiet_since = time.monotonic()

    def read(self) -> bytes:
        """The whole lines appended since the last read."""
        chunks = [self.tail]
        while chunk := os.pread(self.fd, READ_SIZE, self.offset):
            self.offset += len(chunk)
            chunks.append(chunk)
        if len(chunks) > 1:
            self.quiet_since = time.monotonic()
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1  # a write caught half-way ends the chunk
        self.tail = data[cut:]
        return data[:cut]

    def close(self) -> None:
        os.close(self.fd)


class LogFile:
    """The access log file under state_dir, followed on the event loop."""

    def __init__(self, path: Path, on_lines: Callable[[bytes], None]) -> None:
        self.path = path
        self.on_lines = on_lines
        self.master: Callable[[], int | None] = lambda: None  # the pid SIGUSR1 goes to
        self.target = LogTarget("")
        self.rotations = 0
        self._current: _Reader | None = None
        self._old: _Reader | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<LogFile {self.target.server or 'closed'} rotations={self.rotations}>"

    def open(self, saved: LogTarget | None) -> LogTarget:
        """Follow the file from its end (what is there was counted by a driver before)."""
        key = saved.key if saved is not None and saved.key.isalnum() else secrets.token_hex(8)
        _create(self.path)
        self._current = _Reader(self.path, at_end=True)
        self._task = asyncio.get_running_loop().create_task(self._follow())
        self.target = LogTarget(f"file:{self.path}", key)
        return self.target

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for reader in (self._current, self._old):
            if reader is not None:
                reader.close()
        self._current = self._old = None

    def read(self) -> None:
        """Count what nginx has written so far (its buffers not yet flushed excepted)."""
        if self._old is not None:
            self.on_lines(self._old.read())
            if time.monotonic() - self._old.quiet_since > OLD_GRACE:
                self._old.close()
                self._old = None
        if self._current is not None:
            self.on_lines(self._current.read())
            if self._current.offset > ROTATE_BYTES and self._old is None:
                self._rotate()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(READ_INTERVAL)
            try:
                self.read()
            except OSError as error:  # a removed state_dir, a full disk: say so, go on
                log.warning("nginx access log %s: %s", self.path, error)

    def _rotate(self) -> None:
        master = self.master()
        if master is None:
            return
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        _create(self.path)
        old, self._current = self._current, _Reader(self.path, at_end=False)
        if old is not None:
            old.quiet_since = time.monotonic()
        self._old = old
        self.rotations += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGUSR1)  # reopen: workers flush to the old file first


def _create(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
