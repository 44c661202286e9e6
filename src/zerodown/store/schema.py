"""The SQLite store's tables, and the migrations that build them.

SCHEMA_VERSION is what this zerodown writes; `migrate` brings an older file
up to it inside the opening transaction and refuses a newer one.
"""

from __future__ import annotations

import sqlite3

from zerodown.store.base import StoreError

SCHEMA_VERSION = 2

# MIGRATIONS[n] takes the schema from version n to n + 1. Statements are run one
# by one inside the opening transaction (executescript would commit first).
# No CHECK on deploy or instance states: those vocabularies belong to deploy/
# and may grow, and SQLite can only change a CHECK by rebuilding the table.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE releases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            service TEXT NOT NULL,
            version TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'new'
                CHECK (status IN ('new', 'current', 'previous', 'failed', 'retired')),
            created_at REAL NOT NULL,
            last_deployed_at REAL,
            UNIQUE (service, version))""",
        # The database itself refuses a second current or previous release.
        """CREATE UNIQUE INDEX releases_one_per_role ON releases (service, status)
            WHERE status IN ('current', 'previous')""",
        """CREATE TABLE deploys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            service TEXT NOT NULL,
            version TEXT NOT NULL,
            strategy TEXT NOT NULL,
            plan_json TEXT NOT NULL,
            state TEXT NOT NULL,
            outcome TEXT,
            reason TEXT NOT NULL DEFAULT '',
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL)""",
        "CREATE INDEX deploys_by_service ON deploys (service, id)",
        "CREATE INDEX deploys_unfinished ON deploys (id) WHERE outcome IS NULL",
        """CREATE TABLE journal (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            deploy_id INTEGER NOT NULL REFERENCES deploys (id),
            step_index INTEGER NOT NULL,
            step_json TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('before', 'after', 'failed')),
            detail TEXT NOT NULL,
            at REAL NOT NULL)""",
        "CREATE INDEX journal_by_deploy ON journal (deploy_id, seq)",
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            service TEXT NOT NULL,
            version TEXT NOT NULL,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            pid INTEGER,
            pid_started REAL,
            state TEXT NOT NULL,
            updated_at REAL NOT NULL)""",
        """CREATE TABLE locks (
            service TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            deploy_id INTEGER NOT NULL,
            acquired_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            took_over_from TEXT)""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            service TEXT NOT NULL,
            deploy_id INTEGER REFERENCES deploys (id),
            kind TEXT NOT NULL,
            data_json TEXT NOT NULL,
            at REAL NOT NULL)""",
        "CREATE INDEX events_by_service ON events (service, id)",
    ),
    # 1 -> 2: releases may read `aborted` and `rolled_back`. SQLite changes a
    # CHECK only by rebuilding the table (ids and rows kept as they are).
    (
        """CREATE TABLE releases_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            service TEXT NOT NULL,
            version TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'new'
                CHECK (status IN ('new', 'current', 'previous', 'failed', 'aborted',
                                  'rolled_back', 'retired')),
            created_at REAL NOT NULL,
            last_deployed_at REAL,
            UNIQUE (service, version))""",
        """INSERT INTO releases_v2 (id, service, version, spec_json, status, created_at,
            last_deployed_at) SELECT id, service, version, spec_json, status, created_at,
            last_deployed_at FROM releases""",
        "DROP TABLE releases",
        "ALTER TABLE releases_v2 RENAME TO releases",
        """CREATE UNIQUE INDEX releases_one_per_role ON releases (service, status)
            WHERE status IN ('current', 'previous')""",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

CREATE_SCHEMA_VERSION = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the file to SCHEMA_VERSION; call inside a write transaction, so
    two processes opening a new file at once do not both create the tables."""
    db.execute(CREATE_SCHEMA_VERSION)
    row = db.execute("SELECT version FROM schema_version").fetchone()
    version = 0 if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this zerodown "
            f"understands ({SCHEMA_VERSION})"
        )
    if version == SCHEMA_VERSION:
        return
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            db.execute(statement)
    db.execute("DELETE FROM schema_version")
    db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
