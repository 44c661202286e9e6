"""Rows of the SQLite store to the store's values, each checked against the
vocabulary this zerodown knows."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, get_args

from zerodown.config.strategy import StrategyName
from zerodown.release import DeployState, Instance, InstanceState, Outcome, Release
from zerodown.store.base import (
    DeployRecord,
    EventRecord,
    JournalEntry,
    JournalPhase,
    LockRecord,
    ReleaseRecord,
    ReleaseStatus,
    StoreError,
)


def member(value: object, choices: object) -> Any:
    """`value` if the Literal type `choices` allows it. Guards reading a file a
    newer zerodown wrote with a state this one does not know."""
    if value not in get_args(choices):
        raise StoreError(f"unknown value {value!r} in store")
    return value


def as_release(service: str, version: str, spec_json: str) -> Release:
    spec = json.loads(spec_json)
    env = tuple((str(name), str(value)) for name, value in spec["env"])
    return Release(service, version, str(spec["command"]), str(spec["cwd"]), env)


def as_release_record(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        service=row["service"],
        version=row["version"],
        status=member(row["status"], ReleaseStatus),
        created_at=row["created_at"],
        last_deployed_at=row["last_deployed_at"],
    )


def as_deploy_record(row: sqlite3.Row) -> DeployRecord:
    outcome = row["outcome"]
    return DeployRecord(
        id=row["id"],
        service=row["service"],
        version=row["version"],
        strategy=member(row["strategy"], StrategyName),
        plan_json=row["plan_json"],
        state=member(row["state"], DeployState),
        outcome=None if outcome is None else member(outcome, Outcome),
        reason=row["reason"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


def as_journal_entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        seq=row["seq"],
        deploy_id=row["deploy_id"],
        step_index=row["step_index"],
        step_json=row["step_json"],
        phase=member(row["phase"], JournalPhase),
        detail=row["detail"],
        at=row["at"],
    )


def as_instance(row: sqlite3.Row) -> Instance:
    return Instance(
        id=row["id"],
        service=row["service"],
        version=row["version"],
        port=row["port"],
        host=row["host"],
        pid=row["pid"],
        pid_started=row["pid_started"],
        state=member(row["state"], InstanceState),
    )


def as_lock_record(row: sqlite3.Row) -> LockRecord:
    return LockRecord(
        service=row["service"],
        owner=row["owner"],
        deploy_id=row["deploy_id"],
        acquired_at=row["acquired_at"],
        heartbeat_at=row["heartbeat_at"],
        took_over_from=row["took_over_from"],
    )


def lock_row(lock: LockRecord) -> tuple[object, ...]:
    return (
        lock.service,
        lock.owner,
        lock.deploy_id,
        lock.acquired_at,
        lock.heartbeat_at,
        lock.took_over_from,
    )


def as_event_record(row: sqlite3.Row) -> EventRecord:
    return EventRecord(
        id=row["id"],
        service=row["service"],
        deploy_id=row["deploy_id"],
        kind=row["kind"],
        data_json=row["data_json"],
        at=row["at"],
    )
