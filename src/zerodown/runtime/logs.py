"""Instance output to a size-rotated file: `name.log`, `name.log.1` … `name.log.N`.

Our own writer rather than logging.handlers.RotatingFileHandler: app output
is bytes in arbitrary chunks, not records, and must be copied as it comes
(no decoding, no formatting, no added newlines).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from pathlib import Path
from typing import Final, Literal

log = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024  # with StreamReader's own limit, what one instance buffers at most
TAIL_BYTES: Final = 16 * 1024  # read from a log's end to find its last lines


class RotatingLog:
    """An append-only file that rotates before a write would take it past `max_bytes`.

    Rotation cuts after the last newline that fits, so lines stay whole unless
    one line alone is longer than `max_bytes`. `backups=0` truncates instead.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("need max_bytes >= 1 and backups >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open("a")
        self._size = path.stat().st_size

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                self._put(data)
                return
            cut = data.rfind(b"\n", 0, room) + 1
            if cut == 0 and self._size == 0:
                cut = room  # one line longer than a whole file: split it
            self._put(data[:cut])
            data = data[cut:]
            self._rotate()

    def close(self) -> None:
        self._file.close()

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        try:
            for n in range(self.backups - 1, 0, -1):
                older = self._backup(n)
                if older.exists():
                    os.replace(older, self._backup(n + 1))
            if self.backups:
                os.replace(self.path, self._backup(1))
        finally:  # a failed rename (file deleted under us) still leaves a file to write to
            self._file = self._open("w")
            self._size = 0

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _open(self, mode: Literal["a", "w"]) -> io.FileIO:
        # Unbuffered: each chunk is one write(2), so `tail -f` and a reader
        # after a crash see everything the app said.
        return io.FileIO(self.path, mode)


async def pump(reader: asyncio.StreamReader, output: RotatingLog) -> None:
    """Copy `reader` to `output` until end of file; the caller closes both.

    Keeps reading when a write fails (disk full): a reader that stopped would
    fill the pipe, and the app would block on its next print.
    """
    failed = False
    while chunk := await reader.read(READ_CHUNK):
        try:
            output.write(chunk)
        except (OSError, ValueError) as exc:  # ValueError: the file could not even reopen
            if not failed:
                log.warning("cannot write %s, dropping output: %s", output.path, exc)
            failed = True


def tail(path: Path, lines: int, max_bytes: int = TAIL_BYTES) -> tuple[str, ...]:
    """The last `lines` lines of `path` (from its last `max_bytes`), decoded
    leniently: app output is whatever bytes the app wrote."""
    try:
        with open(path, "rb") as source:
            size = source.seek(0, os.SEEK_END)
            source.seek(max(0, size - max_bytes))
            data = source.read()
    except OSError:
        return ()
    text = data.decode("utf-8", "replace").splitlines()
    if len(data) == max_bytes and size > max_bytes:
        text = text[1:]  # the first line read is likely cut
    return tuple(line.rstrip() for line in text[-lines:])
