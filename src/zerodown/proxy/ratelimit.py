"""Rate limits: a token bucket per key, in one table shared by every proxy
worker of a node.

`refill` is the pure bucket arithmetic. `BucketTable` keeps the buckets in a
fixed-size memory map, so memory is bounded whatever the number of clients:
a key's slot is found by its hash in a set of WAYS slots, and a new key
takes the empty slot or evicts the one used least recently. An evicted key
starts again with a full bucket: under a spray of keys (more than the table
holds busy at once) a limit loosens, it never refuses a client it should not.

Workers are separate processes. With several, the supervisor creates the
table as a file (in /dev/shm where there is one) and each worker maps it;
a set of slots is read and written under a POSIX record lock on its own
byte range (`fcntl.lockf`), so two workers never give out the same token and
different keys rarely wait for each other. One process alone maps anonymous
memory and takes no lock. Buckets are stamped with CLOCK_MONOTONIC, which
every process of the machine shares.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
from typing import Final

__all__ = ["BUCKETS", "WAYS", "BucketTable", "create_table_file", "refill"]

BUCKETS: Final = 4096  # sets of slots
WAYS: Final = 8  # slots per set: how many keys of one hash set are kept
_SLOT: Final = struct.Struct("<Qdd")  # key hash (0: free), tokens, last use (monotonic s)
_SET: Final = struct.Struct("<" + "Qdd" * WAYS)
SIZE: Final = BUCKETS * _SET.size  # 768 KiB: 32768 keys


def refill(tokens: float, stamp: float, now: float, rate: float, capacity: int) -> float:
    """Tokens in a bucket at `now` that held `tokens` at `stamp`."""
    if stamp > now:
        return float(capacity)  # stamped by another boot's clock: start afresh
    return min(float(capacity), tokens + (now - stamp) * rate)


def key_hash(key: bytes) -> int:
    # Stable across processes (Python's hash() is salted per process); never 0.
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1


def create_table_file(directory: str | None = None) -> str:
    """A new zeroed table file for several workers to share; the caller removes it.

    In /dev/shm (memory) unless told otherwise; where there is none, or it
    is not writable (some containers), the temporary directory will do: the
    file is mapped, so its pages are read and written in memory either way.
    """
    if directory is None and os.access("/dev/shm", os.W_OK):
        directory = "/dev/shm"
    fd, path = tempfile.mkstemp(prefix="zerodown-ratelimit-", dir=directory)
    try:
        os.ftruncate(fd, SIZE)
    finally:
        os.close(fd)
    return path


class BucketTable:
    """Token buckets by key: in anonymous memory, or in a file several processes map."""

    __slots__ = ("_fd", "_map", "path")

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        if path is None:
            self._map = mmap.mmap(-1, SIZE)
            return
        self._fd = os.open(path, os.O_RDWR)
        if os.fstat(self._fd).st_size != SIZE:
            os.close(self._fd)
            raise ValueError(f"rate limit table {path} is not {SIZE} bytes")
        self._map = mmap.mmap(self._fd, SIZE)

    def __repr__(self) -> str:
        return f"<BucketTable {self.path or 'in memory'}>"

    def take(self, key: bytes, now: float, rate: float, capacity: int) -> float:
        """Take one token from `key`'s bucket: 0.0 if it had one, else the seconds to wait."""
        wanted = key_hash(key)
        offset = (wanted % BUCKETS) * _SET.size
        fd = self._fd
        if fd is not None:
            fcntl.lockf(fd, fcntl.LOCK_EX, _SET.size, offset)
        try:
            return self._take(offset, wanted, now, rate, capacity)
        finally:
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_UN, _SET.size, offset)

    def _take(self, offset: int, wanted: int, now: float, rate: float, capacity: int) -> float:
        slots = _SET.unpack_from(self._map, offset)
        way, tokens = self._find(slots, wanted, now, rate, capacity)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
        _SLOT.pack_into(self._map, offset + way * _SLOT.size, wanted, tokens, now)
        return wait

    @staticmethod
    def _find(
        slots: tuple[float, ...], wanted: int, now: float, rate: float, capacity: int
    ) -> tuple[int, float]:
        """The slot of `wanted` and its tokens now; else a free or the least recent slot, full."""
        oldest, oldest_stamp = 0, float("inf")
        for way in range(WAYS):
            key = slots[3 * way]
            if key == wanted:
                return way, refill(slots[3 * way + 1], slots[3 * way + 2], now, rate, capacity)
            # A free slot (key 0) goes before any eviction.
            stamp = slots[3 * way + 2] if key else float("-inf")
            if stamp < oldest_stamp:
                oldest, oldest_stamp = way, stamp
        return oldest, float(capacity)

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
