"""Persistence of the control plane: the `Store` seam and its SQLite default."""

from zerodown.store.base import (
    BUSY_TIMEOUT,
    STALE_AFTER,
    DeployRecord,
    EventRecord,
    JournalEntry,
    JournalPhase,
    LockRecord,
    NotFound,
    ReleaseRecord,
    ReleaseStatus,
    Store,
    StoreError,
    StoreFileLost,
    local_owner,
)
from zerodown.store.schema import SCHEMA_VERSION
from zerodown.store.sqlite import DB_FILENAME, SqliteStore

__all__ = [
    "BUSY_TIMEOUT",
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "STALE_AFTER",
    "DeployRecord",
    "EventRecord",
    "JournalEntry",
    "JournalPhase",
    "LockRecord",
    "NotFound",
    "ReleaseRecord",
    "ReleaseStatus",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreFileLost",
    "local_owner",
]
