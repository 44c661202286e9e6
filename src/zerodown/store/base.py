"""The control plane's memory: releases, deploys and their journal, instances,
the per-service deploy lock, and events.

`Store` is the seam; `SqliteStore` is the embedded default and a Redis store
can come later behind the same methods. Calls are synchronous: each is one
small transaction, fast enough to make from the daemon's event loop.

Releases. A release is added once per (service, version) and then carries a
status, which only `set_current` and `mark_outcome` move:

    new ──set_current──▶ current ──(another set_current)──▶ previous ──▶ retired
     └──mark_outcome──▶ failed | aborted | rolled_back

`mark_outcome` says how the release's last deploy ended when it did not end
serving: `failed`, the deploy found it broken (a health gate, a crash, the
canary judge; any release but the current one can be marked so, the previous
one too: a rollback must not go there); `aborted`, a person stopped the
deploy; `rolled_back`, the deploy was interrupted (the daemon died) and the
release before it restored. The last two prove nothing against the release:
they never take the current or previous role from one.

At most one release per service is `current` (serving) and at most one is
`previous` (where `rollback` without `--to` goes). `prune` never deletes
either, nor a protected version, nor a release with saved instances.

Deploys. `begin_deploy` records a deploy as `pending`; the executor moves its
state with `set_deploy_state` and writes a journal entry before and after
each step; `finish_deploy` records the outcome and closes it. A deploy with
no outcome after a restart is one the daemon died in: `unfinished_deploys`
finds it and its `journal_entries` say how far it got.

Lock. One deploy per service at a time, across processes. The owner is
"<hostname>:<pid>" (`local_owner()`); the holder heartbeats. A lock whose
owner is a dead process on this host, or whose heartbeat is older than the
store's `stale_after`, is taken over by the next `acquire_lock`.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Set
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from zerodown.config.strategy import StrategyName
from zerodown.errors import ZerodownError
from zerodown.release import DeployState, Instance, Outcome, Release

ReleaseStatus = Literal["new", "current", "previous", "failed", "aborted", "rolled_back", "retired"]
EndedStatus = Literal["failed", "aborted", "rolled_back"]  # see `mark_outcome`
JournalPhase = Literal["before", "after", "failed"]

STALE_AFTER = 30.0  # seconds without a heartbeat before a lock is taken over
BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's transaction


class StoreError(ZerodownError):
    """The store refused an operation, or its file cannot be used."""


class NotFound(StoreError):
    """The release or deploy named does not exist."""


class StoreFileLost(StoreError):
    """The store's file was deleted or replaced under a running daemon.

    Writes would go to an unlinked inode and vanish at the next start, so
    the store refuses them instead of losing state without a word.
    """


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    service: str
    version: str
    status: ReleaseStatus
    created_at: float
    last_deployed_at: float | None  # when it last became current


@dataclass(frozen=True, slots=True)
class DeployRecord:
    id: int
    service: str
    version: str
    strategy: StrategyName
    plan_json: str
    state: DeployState
    outcome: Outcome | None  # None: still running, or the daemon died during it
    reason: str
    started_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int  # increases with every entry of every deploy; never reused
    deploy_id: int
    step_index: int
    step_json: str
    phase: JournalPhase
    detail: str
    at: float  # wall time


@dataclass(frozen=True, slots=True)
class LockRecord:
    service: str
    owner: str
    deploy_id: int
    acquired_at: float
    heartbeat_at: float
    took_over_from: str | None = None  # the stale owner this lock replaced


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    service: str
    deploy_id: int | None
    kind: str
    data_json: str
    at: float


def local_owner() -> str:
    """The lock owner name of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Store(ABC):
    # -- releases --------------------------------------------------------------

    @abstractmethod
    def add_release(self, release: Release) -> None:
        """Record a release. Adding a known (service, version) again keeps its
        status and age but takes the new command/cwd/env: a release is run as
        it was last deployed, and a rollback restarts exactly that."""

    @abstractmethod
    def release(self, service: str, version: str) -> Release | None:
        """How to run a release, or None if unknown."""

    @abstractmethod
    def releases(self, service: str) -> list[ReleaseRecord]:
        """Every release of a service, newest first."""

    @abstractmethod
    def set_current(self, service: str, version: str) -> None:
        """`version` now serves: the old current becomes previous, the old
        previous retired. Raises NotFound for an unknown release."""

    @abstractmethod
    def current(self, service: str) -> str | None:
        """The version serving now."""

    @abstractmethod
    def previous(self, service: str) -> str | None:
        """The version a rollback goes to."""

    @abstractmethod
    def mark_failed(self, service: str, version: str) -> None:
        """A deploy of `version` failed. Refuses the current release (raises
        StoreError): something must serve, so make another current first."""

    @abstractmethod
    def mark_outcome(self, service: str, version: str, status: EndedStatus) -> None:
        """A deploy of `version` ended without it serving (see the module
        docstring): "failed" as `mark_failed`; "aborted" and "rolled_back"
        leave a current or previous release as it is."""

    @abstractmethod
    def prune(self, service: str, keep: int, protect: Set[str]) -> list[str]:
        """Delete all but the newest `keep` releases, sparing current, previous,
        `protect` and any release with saved instances. Returns what went."""

    # -- deploys and journal ---------------------------------------------------

    @abstractmethod
    def begin_deploy(
        self, service: str, version: str, strategy: StrategyName, plan_json: str
    ) -> int:
        """Record a new deploy in state "pending"; returns its id."""

    @abstractmethod
    def set_deploy_state(self, deploy_id: int, state: DeployState) -> None:
        """Move a running deploy. Terminal states go through `finish_deploy`."""

    @abstractmethod
    def journal(
        self,
        deploy_id: int,
        step_index: int,
        step_json: str,
        phase: JournalPhase,
        detail: str = "",
    ) -> None:
        """Append a journal entry: "before" a step runs, "after" it completed,
        or "failed". Entries are never changed or deleted."""

    @abstractmethod
    def journal_entries(self, deploy_id: int) -> list[JournalEntry]:
        """The journal of a deploy in the order it was written."""

    @abstractmethod
    def finish_deploy(self, deploy_id: int, outcome: Outcome, reason: str) -> None:
        """Close a deploy with its outcome (its state becomes the outcome).
        A deploy is finished once: finishing it again raises StoreError."""

    @abstractmethod
    def deploy(self, deploy_id: int) -> DeployRecord | None: ...

    @abstractmethod
    def deploys(self, service: str, limit: int = 20) -> list[DeployRecord]:
        """The latest deploys of a service, newest first."""

    @abstractmethod
    def unfinished_deploys(self) -> list[DeployRecord]:
        """Deploys with no outcome, oldest first: after a restart, the ones to
        finish or roll back."""

    # -- instances -------------------------------------------------------------

    @abstractmethod
    def save_instance(self, instance: Instance) -> None:
        """Insert or replace the instance with this id."""

    @abstractmethod
    def remove_instance(self, instance_id: str) -> None:
        """Forget an instance; unknown ids are ignored."""

    @abstractmethod
    def instances(self, service: str | None = None) -> list[Instance]:
        """Saved instances (of one service, or all), ordered by service and id."""

    # -- lock ------------------------------------------------------------------

    @abstractmethod
    def acquire_lock(self, service: str, owner: str, deploy_id: int) -> LockRecord | None:
        """Take the deploy lock of `service`, or None if a live owner holds it
        (the same owner included: one process runs one deploy per service)."""

    @abstractmethod
    def heartbeat(self, service: str, owner: str) -> bool:
        """Refresh the lock. False means `owner` no longer holds it (it was
        taken over as stale): the deploy must stop."""

    @abstractmethod
    def release_lock(self, service: str, owner: str) -> bool:
        """Give the lock up; False if `owner` did not hold it."""

    @abstractmethod
    def lock(self, service: str) -> LockRecord | None:
        """The lock as stored, stale or not."""

    # -- events ----------------------------------------------------------------

    @abstractmethod
    def add_event(self, service: str, deploy_id: int | None, kind: str, data_json: str) -> int:
        """Append an event; returns its id (ids only increase)."""

    @abstractmethod
    def events(
        self, after_id: int = 0, service: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        """Events with id > `after_id`, oldest first: a stream resumes from the
        last id it sent."""

    @abstractmethod
    def last_event_id(self) -> int:
        """The id of the newest event ever added (0: none), pruned or not."""

    @abstractmethod
    def prune_events(self, before: float, keep: int) -> int:
        """Delete events older than `before` (epoch seconds) and all but the
        newest `keep`; returns how many went. Ids are never reused."""

    # -- lifetime --------------------------------------------------------------

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
