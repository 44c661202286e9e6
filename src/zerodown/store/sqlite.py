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
from typing import get_args

from zerodown.config.strategy import StrategyName
from zerodown.release import DeployState, Instance, Outcome, Release
from zerodown.store.base import (
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
from zerodown.store.connection import as_store_error, connect, file_id
from zerodown.store.rows import (
    as_deploy_record,
    as_event_record,
    as_instance,
    as_journal_entry,
    as_lock_record,
    as_release,
    as_release_record,
    lock_row,
    member,
)
from zerodown.store.schema import migrate
from zerodown.store.sql import (
    ADD_RELEASE,
    DELETE_INSTANCE,
    DELETE_RELEASE,
    FINISH_DEPLOY,
    HEARTBEAT,
    INSERT_DEPLOY,
    INSERT_EVENT,
    INSERT_JOURNAL,
    LAST_EVENT_ID,
    MAKE_CURRENT,
    PRUNE_EXTRA_EVENTS,
    PRUNE_OLD_EVENTS,
    RELEASE_LOCK,
    SAVE_INSTANCE,
    SELECT_ALL_INSTANCES,
    SELECT_BY_STATUS,
    SELECT_DEPLOY,
    SELECT_DEPLOYS,
    SELECT_EVENTS,
    SELECT_INSTANCES,
    SELECT_JOURNAL,
    SELECT_LOCK,
    SELECT_OUTCOME,
    SELECT_PRUNE_CANDIDATES,
    SELECT_RELEASES,
    SELECT_SERVICE_EVENTS,
    SELECT_SPEC,
    SELECT_STATUS,
    SELECT_UNFINISHED,
    SET_DEPLOY_STATE,
    SET_RELEASE_STATUS,
    SET_STATUS,
    TAKE_LOCK,
    TOUCH_CURRENT,
)

log = logging.getLogger("zerodown.store")

DB_FILENAME = "zerodown.sqlite3"  # the store's file name inside state_dir


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
        self._db = connect(self.path)
        # Which file we opened, to notice it deleted or replaced (see _check_file).
        self._file_id = file_id(self.path)
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
        return None if row is None else as_release(service, version, row["spec_json"])

    def releases(self, service: str) -> list[ReleaseRecord]:
        return [as_release_record(row) for row in self._all(SELECT_RELEASES, service)]

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
        return [as_journal_entry(row) for row in self._all(SELECT_JOURNAL, deploy_id)]

    def finish_deploy(self, deploy_id: int, outcome: Outcome, reason: str) -> None:
        now = self._clock()
        with self._write() as db:
            _require_running(db, deploy_id)
            db.execute(FINISH_DEPLOY, (outcome, outcome, reason, now, now, deploy_id))

    def deploy(self, deploy_id: int) -> DeployRecord | None:
        row = self._one(SELECT_DEPLOY, deploy_id)
        return None if row is None else as_deploy_record(row)

    def deploys(self, service: str, limit: int = 20) -> list[DeployRecord]:
        return [as_deploy_record(row) for row in self._all(SELECT_DEPLOYS, service, limit)]

    def unfinished_deploys(self) -> list[DeployRecord]:
        return [as_deploy_record(row) for row in self._all(SELECT_UNFINISHED)]

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
            return [as_instance(row) for row in self._all(SELECT_ALL_INSTANCES)]
        return [as_instance(row) for row in self._all(SELECT_INSTANCES, service)]

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
            db.execute(TAKE_LOCK, lock_row(taken))
        return taken

    def heartbeat(self, service: str, owner: str) -> bool:
        with self._write() as db:
            return db.execute(HEARTBEAT, (self._clock(), service, owner)).rowcount == 1

    def release_lock(self, service: str, owner: str) -> bool:
        with self._write() as db:
            return db.execute(RELEASE_LOCK, (service, owner)).rowcount == 1

    def lock(self, service: str) -> LockRecord | None:
        row = self._one(SELECT_LOCK, service)
        return None if row is None else as_lock_record(row)

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
        return [as_event_record(row) for row in rows]

    def last_event_id(self) -> int:
        row = self._one(LAST_EVENT_ID)
        return 0 if row is None else int(row["seq"])

    def prune_events(self, before: float, keep: int) -> int:
        with self._write() as db:
            old = db.execute(PRUNE_OLD_EVENTS, (before,)).rowcount
            extra = db.execute(PRUNE_EXTRA_EVENTS, (keep,)).rowcount
        return old + extra

    # -- plumbing --------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so a
        read inside it cannot be invalidated by another process before we write."""
        with self._mutex, as_store_error():
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
        moved = self._file_id is not None and file_id(self.path) != self._file_id
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
        with self._mutex, as_store_error():
            row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
            return row

    def _all(self, sql: str, *params: object) -> list[sqlite3.Row]:
        with self._mutex, as_store_error():
            return self._db.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        with self._write() as db:
            migrate(db, self.path)


# -- checks inside a transaction ---------------------------------------------------


def _status(db: sqlite3.Connection, service: str, version: str) -> ReleaseStatus:
    row = db.execute(SELECT_STATUS, (service, version)).fetchone()
    if row is None:
        raise NotFound(f"no release {version} of {service}")
    status: ReleaseStatus = member(row["status"], ReleaseStatus)
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
