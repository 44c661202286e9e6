"""SqliteStore: the embedded store, one SQLite file (stdlib sqlite3) in WAL mode.

WAL lets the admin API read while a deploy writes, and lets a second process
(the CLI inspecting, or a daemon starting while a stale one still exits) open
the same file; writes wait up to BUSY_TIMEOUT for each other. Every write is
one `BEGIN IMMEDIATE` transaction, so a read-then-write such as taking a stale
lock cannot interleave with another process's.

Threads: the daemon calls from its event loop and, rarely, from a thread pool.
One connection is shared (`check_same_thread=False`) and every use of it holds
`self._mutex`, so calls from several threads are serialized, never interleaved.
Open one SqliteStore per process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from zerodown.config.strategy import StrategyName
from zerodown.release import DeployState, Instance, InstanceState, Outcome, Release
from zerodown.store.base import (
    BUSY_TIMEOUT,
    STALE_AFTER,
    DeployRecord,
    EndedStatus,
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
)

log = logging.getLogger("zerodown.store")

DB_FILENAME = "zerodown.sqlite3"  # the store's file name inside state_dir
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

# -- releases
ADD_RELEASE = """INSERT INTO releases (service, version, spec_json, created_at)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (service, version) DO UPDATE SET spec_json = excluded.spec_json"""
SELECT_SPEC = "SELECT spec_json FROM releases WHERE service = ? AND version = ?"
RELEASE_COLUMNS = "service, version, status, created_at, last_deployed_at"
SELECT_RELEASES = f"""SELECT {RELEASE_COLUMNS} FROM releases WHERE service = ?
    ORDER BY created_at DESC, id DESC"""
SELECT_STATUS = "SELECT status FROM releases WHERE service = ? AND version = ?"
SELECT_BY_STATUS = "SELECT version FROM releases WHERE service = ? AND status = ?"
SET_STATUS = "UPDATE releases SET status = ? WHERE service = ? AND status = ?"
MAKE_CURRENT = """UPDATE releases SET status = 'current', last_deployed_at = ?
    WHERE service = ? AND version = ?"""
TOUCH_CURRENT = "UPDATE releases SET last_deployed_at = ? WHERE service = ? AND version = ?"
SET_RELEASE_STATUS = "UPDATE releases SET status = ? WHERE service = ? AND version = ?"
# Newest first, with whether anything still needs the release's definition: a
# saved instance (to restart or adopt it) or an unfinished deploy (to recover it).
SELECT_PRUNE_CANDIDATES = """SELECT r.version, r.status,
        EXISTS (SELECT 1 FROM instances i
                WHERE i.service = r.service AND i.version = r.version)
        OR EXISTS (SELECT 1 FROM deploys d
                   WHERE d.service = r.service AND d.version = r.version
                   AND d.outcome IS NULL) AS in_use
    FROM releases r WHERE r.service = ? ORDER BY r.created_at DESC, r.id DESC"""
DELETE_RELEASE = "DELETE FROM releases WHERE service = ? AND version = ?"

# -- deploys and journal
INSERT_DEPLOY = """INSERT INTO deploys
    (service, version, strategy, plan_json, state, started_at, updated_at)
    VALUES (?, ?, ?, ?, 'pending', ?, ?)"""
DEPLOY_COLUMNS = """id, service, version, strategy, plan_json, state, outcome, reason,
    started_at, updated_at, finished_at"""
SELECT_DEPLOY = f"SELECT {DEPLOY_COLUMNS} FROM deploys WHERE id = ?"
SELECT_DEPLOYS = f"SELECT {DEPLOY_COLUMNS} FROM deploys WHERE service = ? ORDER BY id DESC LIMIT ?"
SELECT_UNFINISHED = f"SELECT {DEPLOY_COLUMNS} FROM deploys WHERE outcome IS NULL ORDER BY id"
SELECT_OUTCOME = "SELECT outcome FROM deploys WHERE id = ?"
SET_DEPLOY_STATE = "UPDATE deploys SET state = ?, updated_at = ? WHERE id = ?"
FINISH_DEPLOY = """UPDATE deploys SET state = ?, outcome = ?, reason = ?,
    updated_at = ?, finished_at = ? WHERE id = ?"""
INSERT_JOURNAL = """INSERT INTO journal (deploy_id, step_index, step_json, phase, detail, at)
    VALUES (?, ?, ?, ?, ?, ?)"""
SELECT_JOURNAL = """SELECT seq, deploy_id, step_index, step_json, phase, detail, at
    FROM journal WHERE deploy_id = ? ORDER BY seq"""
SELECT_LAST_COMPLETED = """SELECT COALESCE(MAX(step_index), -1) FROM journal
    WHERE deploy_id = ? AND phase = 'after'"""

# -- instances
SAVE_INSTANCE = """INSERT INTO instances
    (id, service, version, host, port, pid, pid_started, state, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET service = excluded.service, version = excluded.version,
        host = excluded.host, port = excluded.port, pid = excluded.pid,
        pid_started = excluded.pid_started, state = excluded.state,
        updated_at = excluded.updated_at"""
DELETE_INSTANCE = "DELETE FROM instances WHERE id = ?"
INSTANCE_COLUMNS = "id, service, version, host, port, pid, pid_started, state"
SELECT_ALL_INSTANCES = f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY service, id"
SELECT_INSTANCES = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE service = ? ORDER BY id"

# -- lock
LOCK_COLUMNS = "service, owner, deploy_id, acquired_at, heartbeat_at, took_over_from"
SELECT_LOCK = f"SELECT {LOCK_COLUMNS} FROM locks WHERE service = ?"
TAKE_LOCK = f"""INSERT OR REPLACE INTO locks ({LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"""
HEARTBEAT = "UPDATE locks SET heartbeat_at = ? WHERE service = ? AND owner = ?"
RELEASE_LOCK = "DELETE FROM locks WHERE service = ? AND owner = ?"

# -- events
INSERT_EVENT = """INSERT INTO events (service, deploy_id, kind, data_json, at)
    VALUES (?, ?, ?, ?, ?)"""
EVENT_COLUMNS = "id, service, deploy_id, kind, data_json, at"
SELECT_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?"
SELECT_SERVICE_EVENTS = f"""SELECT {EVENT_COLUMNS} FROM events
    WHERE id > ? AND service = ? ORDER BY id LIMIT ?"""


class SqliteStore(Store):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stale_after: float = STALE_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating or migrating) the store at `path`; ":memory:" for tests."""
        self.path = str(path)
        self.stale_after = stale_after
        self._clock = clock
        self._hostname = socket.gethostname()
        self._mutex = threading.RLock()
        self._db = _connect(self.path)
        # Which file we opened, to notice it deleted or replaced (see _check_file).
        self._file_id = _file_id(self.path)
        self._lost: str | None = None  # why writes are refused, once the file is gone
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    # -- releases --------------------------------------------------------------

    def add_release(self, release: Release) -> None:
        spec = {"command": release.command, "cwd": release.cwd, "env": list(release.env)}
        with self._write() as db:
            db.execute(
                ADD_RELEASE, (release.service, release.version, json.dumps(spec), self._clock())
            )

    def release(self, service: str, version: str) -> Release | None:
        row = self._one(SELECT_SPEC, service, version)
        return None if row is None else _release(service, version, row["spec_json"])

    def releases(self, service: str) -> list[ReleaseRecord]:
        return [_release_record(row) for row in self._all(SELECT_RELEASES, service)]

    def set_current(self, service: str, version: str) -> None:
        now = self._clock()
        with self._write() as db:
            status = _status(db, service, version)
            if status == "current":  # a redeploy of what serves: it stays current
                db.execute(TOUCH_CURRENT, (now, service, version))
                return
            # In this order, so rolling back to the previous release works too.
            db.execute(SET_STATUS, ("retired", service, "previous"))
            db.execute(SET_STATUS, ("previous", service, "current"))
            db.execute(MAKE_CURRENT, (now, service, version))

    def current(self, service: str) -> str | None:
        return self._version_with(service, "current")

    def previous(self, service: str) -> str | None:
        return self._version_with(service, "previous")

    def mark_failed(self, service: str, version: str) -> None:
        self.mark_outcome(service, version, "failed")

    def mark_outcome(self, service: str, version: str, status: EndedStatus) -> None:
        with self._write() as db:
            now = _status(db, service, version)
            if status == "failed" and now == "current":
                raise StoreError(f"{service} {version} is current; make another release current")
            if status == "failed" or now not in ("current", "previous"):
                db.execute(SET_RELEASE_STATUS, (status, service, version))

    def prune(self, service: str, keep: int, protect: Set[str]) -> list[str]:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")
        with self._write() as db:
            rows = db.execute(SELECT_PRUNE_CANDIDATES, (service,)).fetchall()
            doomed = [row["version"] for row in rows[keep:] if _prunable(row, protect)]
            db.executemany(DELETE_RELEASE, [(service, version) for version in doomed])
        return doomed

    def _version_with(self, service: str, status: ReleaseStatus) -> str | None:
        row = self._one(SELECT_BY_STATUS, service, status)
        return None if row is None else str(row["version"])

    # -- deploys and journal ---------------------------------------------------

    def begin_deploy(
        self, service: str, version: str, strategy: StrategyName, plan_json: str
    ) -> int:
        now = self._clock()
        with self._write() as db:
            cursor = db.execute(INSERT_DEPLOY, (service, version, strategy, plan_json, now, now))
        assert cursor.lastrowid is not None  # always set after an INSERT
        return cursor.lastrowid

    def set_deploy_state(self, deploy_id: int, state: DeployState) -> None:
        if state in get_args(Outcome):
            raise StoreError(f"{state!r} is an outcome: use finish_deploy")
        with self._write() as db:
            _require_running(db, deploy_id)
            db.execute(SET_DEPLOY_STATE, (state, self._clock(), deploy_id))

    def journal(
        self,
        deploy_id: int,
        step_index: int,
        step_json: str,
        phase: JournalPhase,
        detail: str = "",
    ) -> None:
        row = (deploy_id, step_index, step_json, phase, detail, self._clock())
        with self._write() as db:
            _require_running(db, deploy_id)
            db.execute(INSERT_JOURNAL, row)

    def journal_entries(self, deploy_id: int) -> list[JournalEntry]:
        return [_journal_entry(row) for row in self._all(SELECT_JOURNAL, deploy_id)]

    def last_completed_step(self, deploy_id: int) -> int:
        row = self._one(SELECT_LAST_COMPLETED, deploy_id)
        assert row is not None  # an aggregate always yields one row
        return int(row[0])

    def finish_deploy(self, deploy_id: int, outcome: Outcome, reason: str) -> None:
        now = self._clock()
        with self._write() as db:
            _require_running(db, deploy_id)
            db.execute(FINISH_DEPLOY, (outcome, outcome, reason, now, now, deploy_id))

    def deploy(self, deploy_id: int) -> DeployRecord | None:
        row = self._one(SELECT_DEPLOY, deploy_id)
        return None if row is None else _deploy_record(row)

    def deploys(self, service: str, limit: int = 20) -> list[DeployRecord]:
        return [_deploy_record(row) for row in self._all(SELECT_DEPLOYS, service, limit)]

    def unfinished_deploys(self) -> list[DeployRecord]:
        return [_deploy_record(row) for row in self._all(SELECT_UNFINISHED)]

    # -- instances -------------------------------------------------------------

    def save_instance(self, instance: Instance) -> None:
        i = instance
        row = (i.id, i.service, i.version, i.host, i.port, i.pid, i.pid_started, i.state)
        with self._write() as db:
            db.execute(SAVE_INSTANCE, (*row, self._clock()))

    def remove_instance(self, instance_id: str) -> None:
        with self._write() as db:
            db.execute(DELETE_INSTANCE, (instance_id,))

    def instances(self, service: str | None = None) -> list[Instance]:
        if service is None:
            return [_instance(row) for row in self._all(SELECT_ALL_INSTANCES)]
        return [_instance(row) for row in self._all(SELECT_INSTANCES, service)]

    # -- lock ------------------------------------------------------------------

    def acquire_lock(self, service: str, owner: str, deploy_id: int) -> LockRecord | None:
        with self._write() as db:
            held = db.execute(SELECT_LOCK, (service,)).fetchone()
            if held is not None and not self._stale(held):
                return None
            now = self._clock()
            taken = LockRecord(
                service, owner, deploy_id, now, now, None if held is None else held["owner"]
            )
            db.execute(TAKE_LOCK, _lock_row(taken))
        return taken

    def heartbeat(self, service: str, owner: str) -> bool:
        with self._write() as db:
            return db.execute(HEARTBEAT, (self._clock(), service, owner)).rowcount == 1

    def release_lock(self, service: str, owner: str) -> bool:
        with self._write() as db:
            return db.execute(RELEASE_LOCK, (service, owner)).rowcount == 1

    def lock(self, service: str) -> LockRecord | None:
        row = self._one(SELECT_LOCK, service)
        return None if row is None else _lock_record(row)

    def _stale(self, held: sqlite3.Row) -> bool:
        if self._clock() - held["heartbeat_at"] > self.stale_after:
            return True
        host, _, pid = str(held["owner"]).rpartition(":")
        # Only a pid on this host can be checked; elsewhere the heartbeat decides.
        if host != self._hostname or not pid.isdigit() or int(pid) <= 0:
            return False
        return not _pid_alive(int(pid))

    # -- events ----------------------------------------------------------------

    def add_event(self, service: str, deploy_id: int | None, kind: str, data_json: str) -> int:
        with self._write() as db:
            if deploy_id is not None:
                _require_deploy(db, deploy_id)
            cursor = db.execute(INSERT_EVENT, (service, deploy_id, kind, data_json, self._clock()))
        assert cursor.lastrowid is not None  # always set after an INSERT
        return cursor.lastrowid

    def events(
        self, after_id: int = 0, service: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        if service is None:
            rows = self._all(SELECT_EVENTS, after_id, limit)
        else:
            rows = self._all(SELECT_SERVICE_EVENTS, after_id, service, limit)
        return [_event_record(row) for row in rows]

    # -- plumbing --------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so a
        read inside it cannot be invalidated by another process before we write."""
        with self._mutex, _as_store_error():
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _check_file(self) -> None:
        """Refuse to write once our file is no longer the one at `path`.

        A deleted (or replaced) database stays open and writable through its
        unlinked inode, so every write would seem to work and be gone at the
        next start. One stat per write is the price of noticing.
        """
        moved = self._file_id is not None and _file_id(self.path) != self._file_id
        if self._lost is None and moved:
            self._lost = (
                f"{self.path}: the state database was deleted or replaced while zerodown "
                "ran; refusing to write state that would be lost at the next start "
                "(restart zerodown to open the file again)"
            )
            log.error("%s", self._lost)
        if self._lost is not None:
            raise StoreFileLost(self._lost)

    def _one(self, sql: str, *params: object) -> sqlite3.Row | None:
        with self._mutex, _as_store_error():
            row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
            return row

    def _all(self, sql: str, *params: object) -> list[sqlite3.Row]:
        with self._mutex, _as_store_error():
            return self._db.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        # Inside a write transaction: two processes opening a new file at once
        # must not both create the tables.
        with self._write() as db:
            db.execute(CREATE_SCHEMA_VERSION)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this zerodown "
                    f"understands ({SCHEMA_VERSION})"
                )
            if version == SCHEMA_VERSION:
                return
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


# -- connection ------------------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # timeout is SQLite's busy_timeout: how long a write waits for another process.
    # isolation_level=None: no implicit transactions; _write() says where they are.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        _configure(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None for ":memory:" or no file there."""
    if path == ":memory:":
        return None
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def _configure(db: sqlite3.Connection, path: str) -> None:
    with _as_store_error():
        mode = _enter_wal(db)
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


def _enter_wal(db: sqlite3.Connection) -> str:
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
def _as_store_error() -> Iterator[None]:
    """The edge where sqlite3's errors become the library's own."""
    try:
        yield
    except sqlite3.Error as error:
        raise StoreError(f"store: {error}") from error


# -- checks inside a transaction ---------------------------------------------------


def _status(db: sqlite3.Connection, service: str, version: str) -> ReleaseStatus:
    row = db.execute(SELECT_STATUS, (service, version)).fetchone()
    if row is None:
        raise NotFound(f"no release {version} of {service}")
    status: ReleaseStatus = _member(row["status"], ReleaseStatus)
    return status


def _require_deploy(db: sqlite3.Connection, deploy_id: int) -> sqlite3.Row:
    row: sqlite3.Row | None = db.execute(SELECT_OUTCOME, (deploy_id,)).fetchone()
    if row is None:
        raise NotFound(f"no deploy {deploy_id}")
    return row


def _require_running(db: sqlite3.Connection, deploy_id: int) -> None:
    # A finished deploy is history: its state, outcome and journal stay as they were.
    outcome = _require_deploy(db, deploy_id)["outcome"]
    if outcome is not None:
        raise StoreError(f"deploy {deploy_id} already finished: {outcome}")


def _prunable(row: sqlite3.Row, protect: Set[str]) -> bool:
    spared = row["status"] in ("current", "previous") or row["in_use"]
    return not spared and row["version"] not in protect


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# -- rows to values -----------------------------------------------------------------


def _member(value: object, choices: object) -> Any:
    """`value` if the Literal type `choices` allows it. Guards reading a file a
    newer zerodown wrote with a state this one does not know."""
    if value not in get_args(choices):
        raise StoreError(f"unknown value {value!r} in store")
    return value


def _release(service: str, version: str, spec_json: str) -> Release:
    spec = json.loads(spec_json)
    env = tuple((str(name), str(value)) for name, value in spec["env"])
    return Release(service, version, str(spec["command"]), str(spec["cwd"]), env)


def _release_record(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        service=row["service"],
        version=row["version"],
        status=_member(row["status"], ReleaseStatus),
        created_at=row["created_at"],
        last_deployed_at=row["last_deployed_at"],
    )


def _deploy_record(row: sqlite3.Row) -> DeployRecord:
    outcome = row["outcome"]
    return DeployRecord(
        id=row["id"],
        service=row["service"],
        version=row["version"],
        strategy=_member(row["strategy"], StrategyName),
        plan_json=row["plan_json"],
        state=_member(row["state"], DeployState),
        outcome=None if outcome is None else _member(outcome, Outcome),
        reason=row["reason"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


def _journal_entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        seq=row["seq"],
        deploy_id=row["deploy_id"],
        step_index=row["step_index"],
        step_json=row["step_json"],
        phase=_member(row["phase"], JournalPhase),
        detail=row["detail"],
        at=row["at"],
    )


def _instance(row: sqlite3.Row) -> Instance:
    return Instance(
        id=row["id"],
        service=row["service"],
        version=row["version"],
        port=row["port"],
        host=row["host"],
        pid=row["pid"],
        pid_started=row["pid_started"],
        state=_member(row["state"], InstanceState),
    )


def _lock_record(row: sqlite3.Row) -> LockRecord:
    return LockRecord(
        service=row["service"],
        owner=row["owner"],
        deploy_id=row["deploy_id"],
        acquired_at=row["acquired_at"],
        heartbeat_at=row["heartbeat_at"],
        took_over_from=row["took_over_from"],
    )


def _lock_row(lock: LockRecord) -> tuple[object, ...]:
    return (
        lock.service,
        lock.owner,
        lock.deploy_id,
        lock.acquired_at,
        lock.heartbeat_at,
        lock.took_over_from,
    )


def _event_record(row: sqlite3.Row) -> EventRecord:
    return EventRecord(
        id=row["id"],
        service=row["service"],
        deploy_id=row["deploy_id"],
        kind=row["kind"],
        data_json=row["data_json"],
        at=row["at"],
    )
