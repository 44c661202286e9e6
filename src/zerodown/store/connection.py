"""Opening the SQLite file: WAL mode, pragmas, and the edge where sqlite3's
errors become the store's own."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zerodown.store.base import BUSY_TIMEOUT, StoreError


def connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # timeout is SQLite's busy_timeout: how long a write waits for another process.
    # isolation_level=None: no implicit transactions; _write() says where they are.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        configure(db, path)
    except BaseException:
        db.close()
        raise
    return db


def file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None for ":memory:" or no file there."""
    if path == ":memory:":
        return None
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def configure(db: sqlite3.Connection, path: str) -> None:
    with as_store_error():
        mode = enter_wal(db)
        if mode != "wal" and path != ":memory:":
            raise StoreError(f"{path}: cannot use WAL mode (journal_mode is {mode})")
        # NORMAL, not FULL: in WAL mode a commit then survives a crash or a
        # kill -9 of the daemon (the case the journal is for) without an fsync
        # per write. FULL cost tens of milliseconds per journal entry, spent on
        # the event loop the proxy shares, so every deploy step stalled traffic.
        # A power cut may lose the last entries; recovery restores the current
        # release either way.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")


WAL_RETRY = 0.01  # seconds between tries to switch a new file to WAL


def enter_wal(db: sqlite3.Connection) -> str:
    """Switch to WAL; the journal mode in force after it.

    Two processes opening a new file at once (a hot restart's two
    generations, say) race to switch it, and SQLite answers the loser
    "database is locked" at once, without its busy handler. So wait here as
    the busy timeout would have; the loser then finds WAL already on.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            mode: str = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_RETRY)


@contextmanager
def as_store_error() -> Iterator[None]:
    """The edge where sqlite3's errors become the library's own."""
    try:
        yield
    except sqlite3.Error as error:
        raise StoreError(f"store: {error}") from error
