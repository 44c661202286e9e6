"""One `zerodown serve` per state directory: an exclusive lock, held for the daemon's life.

Two daemons on one state_dir share the store, so each adopts the other's app
instances and stops them when it exits. The lock is flock(2) on
`state_dir/serve.lock`, which also records the holder's pid for the message
the second daemon exits with. The kernel drops the lock when the holder dies,
however it dies, so a crash never leaves a stale lock behind.

Hot restart. flock belongs to the open file, not to the process, so the old
generation hands its descriptor to the new one with the sockets
(handover.py). Both then hold the one lock: there is no moment when it is
free for a third daemon to take, and no wait for the old generation to exit.
That is also why the old generation never unlocks (LOCK_UN would free it
for its successor too): it only closes its descriptor, and the lock lasts
until the last holder closes. The descriptor is not inheritable otherwise,
so neither proxy workers nor apps (which outlive the daemon) ever hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from zerodown.errors import StateDirBusy

LOCK_FILENAME: Final = "serve.lock"


class StateDirLock:
    """The held lock of one state directory; `close` lets it go."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def __repr__(self) -> str:
        return f"<StateDirLock {self.path} fd={self.fd}>"

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Take the lock, or raise StateDirBusy naming the holder's pid."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / LOCK_FILENAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _recorded_pid(fd)
            os.close(fd)
            raise StateDirBusy(str(state_dir), holder) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)._record_pid()

    @classmethod
    def inherit(cls, fd: int, state_dir: Path) -> StateDirLock:
        """Take over the lock an old generation passed us as `fd`.

        A new config may name another state_dir: then the inherited lock is
        not the one we need, and ours is acquired as on an ordinary start.
        """
        path = state_dir / LOCK_FILENAME
        if not _same_file(fd, path):
            os.close(fd)
            return cls.acquire(state_dir)
        os.set_inheritable(fd, False)  # passed to us inheritable; keep it from our children
        # Already ours (the same open file), so this cannot block; it checks
        # that the descriptor really holds the lock.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(fd, path)._record_pid()

    def close(self) -> None:
        """Let go of our hold (never LOCK_UN: a successor may share it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _record_pid(self) -> StateDirLock:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self


def _recorded_pid(fd: int) -> int | None:
    # Empty for an instant while the holder writes it; then "pid unknown".
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
