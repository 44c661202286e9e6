"""SqliteStore on real files in tmp_path: releases, deploys and journal,
instances, the deploy lock (also across processes) and events, read back
after a reopen as a restarted daemon would."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerodown.release import Instance, Release
from zerodown.store import (
    SCHEMA_VERSION,
    STALE_AFTER,
    NotFound,
    SqliteStore,
    Store,
    StoreError,
    local_owner,
)
from zerodown.store.schema import MIGRATIONS

HOST = socket.gethostname()
ME = local_owner()
OTHER = f"{HOST}:{os.getppid()}"  # a live process on this host that is not us


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "zerodown.sqlite3"


@pytest.fixture
def store(path: Path, clock: Clock) -> Iterator[SqliteStore]:
    with SqliteStore(path, clock=clock) as opened:
        yield opened


def release(version: str, service: str = "web", **kw: str) -> Release:
    command = kw.get("command", f"python -m app --port {{port}} --version {version}")
    return Release(service, version, command, cwd=kw.get("cwd", "."), env=(("A", "1"),))


def add(store: Store, *versions: str, clock: Clock | None = None) -> None:
    for version in versions:
        store.add_release(release(version))
        if clock is not None:
            clock.advance(1)


def statuses(store: Store, service: str = "web") -> dict[str, str]:
    return {record.version: record.status for record in store.releases(service)}


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- opening ---------------------------------------------------------------------


def test_open_creates_the_file_in_wal_mode_with_schema_version(path: Path) -> None:
    SqliteStore(path).close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()


def test_reopen_keeps_one_schema_version_row(path: Path) -> None:
    for _ in range(3):
        SqliteStore(path).close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()


def test_a_newer_schema_is_refused(path: Path) -> None:
    SqliteStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)


def test_memory_store_works() -> None:
    with SqliteStore(":memory:") as store:
        store.add_release(release("v1"))
        assert store.release("web", "v1") == release("v1")


def test_a_closed_store_raises_store_error(path: Path) -> None:
    store = SqliteStore(path)
    store.close()
    with pytest.raises(StoreError):
        store.current("web")


# -- releases --------------------------------------------------------------------


def test_release_round_trips_command_cwd_and_env(store: SqliteStore) -> None:
    original = Release(
        "web", "v1", "run {port}", cwd="/srv/{version}", env=(("B", "2"), ("A", "1"))
    )
    store.add_release(original)
    assert store.release("web", "v1") == original
    assert store.release("web", "v9") is None
    assert store.release("api", "v1") is None


def test_add_release_is_idempotent_and_takes_the_latest_definition(
    store: SqliteStore, clock: Clock
) -> None:
    store.add_release(release("v1"))
    store.set_current("web", "v1")
    clock.advance(5)
    store.add_release(release("v1", command="new command"))
    [record] = store.releases("web")
    assert (record.status, record.created_at) == ("current", 1_000.0)
    assert store.release("web", "v1") == release("v1", command="new command")


def test_releases_are_newest_first_and_start_new(store: SqliteStore, clock: Clock) -> None:
    add(store, "v1", "v2", "v3", clock=clock)
    records = store.releases("web")
    assert [r.version for r in records] == ["v3", "v2", "v1"]
    assert [r.created_at for r in records] == [1_002.0, 1_001.0, 1_000.0]
    assert {r.status for r in records} == {"new"}
    assert {r.last_deployed_at for r in records} == {None}


def test_same_created_at_still_orders_newest_first(store: SqliteStore) -> None:
    add(store, "a", "b", "c")  # the clock does not move
    assert [r.version for r in store.releases("web")] == ["c", "b", "a"]


def test_set_current_moves_current_to_previous_to_retired(store: SqliteStore, clock: Clock) -> None:
    add(store, "v1", "v2", "v3")
    store.set_current("web", "v1")
    assert (store.current("web"), store.previous("web")) == ("v1", None)
    store.set_current("web", "v2")
    assert statuses(store) == {"v3": "new", "v2": "current", "v1": "previous"}
    clock.advance(10)
    store.set_current("web", "v3")
    assert statuses(store) == {"v3": "current", "v2": "previous", "v1": "retired"}
    assert store.releases("web")[0].last_deployed_at == 1_010.0


def test_set_current_to_previous_is_a_rollback(store: SqliteStore) -> None:
    add(store, "v1", "v2")
    store.set_current("web", "v1")
    store.set_current("web", "v2")
    store.set_current("web", "v1")
    assert (store.current("web"), store.previous("web")) == ("v1", "v2")


def test_set_current_on_the_current_release_keeps_previous(
    store: SqliteStore, clock: Clock
) -> None:
    add(store, "v1", "v2")
    store.set_current("web", "v1")
    store.set_current("web", "v2")
    clock.advance(3)
    store.set_current("web", "v2")
    assert (store.current("web"), store.previous("web")) == ("v2", "v1")
    assert store.releases("web")[0].last_deployed_at == 1_003.0


def test_set_current_of_an_unknown_release_raises(store: SqliteStore) -> None:
    add(store, "v1")
    store.set_current("web", "v1")
    with pytest.raises(NotFound):
        store.set_current("web", "v2")
    assert store.current("web") == "v1"  # the failed call changed nothing


def test_services_are_independent(store: SqliteStore) -> None:
    store.add_release(release("v1", service="api"))
    add(store, "v1", "v2")
    store.set_current("web", "v1")
    store.set_current("web", "v2")
    store.set_current("api", "v1")
    assert (store.current("api"), store.previous("api")) == ("v1", None)
    assert (store.current("web"), store.previous("web")) == ("v2", "v1")
    assert store.current("nothing") is None
    assert store.previous("nothing") is None
    assert store.releases("nothing") == []


def test_mark_failed(store: SqliteStore) -> None:
    add(store, "v1", "v2", "v3")
    store.set_current("web", "v1")
    store.set_current("web", "v2")
    store.mark_failed("web", "v3")
    assert statuses(store)["v3"] == "failed"
    store.mark_failed("web", "v1")  # previous found bad: rollback must not go there
    assert store.previous("web") is None
    assert statuses(store) == {"v3": "failed", "v2": "current", "v1": "failed"}


def test_mark_failed_refuses_the_current_release(store: SqliteStore) -> None:
    add(store, "v1")
    store.set_current("web", "v1")
    with pytest.raises(StoreError, match="current"):
        store.mark_failed("web", "v1")
    assert store.current("web") == "v1"
    with pytest.raises(NotFound):
        store.mark_failed("web", "v9")


def test_aborted_and_rolled_back_releases_say_so_but_keep_a_role(store: SqliteStore) -> None:
    add(store, "v1", "v2", "v3", "v4", "v5")
    store.set_current("web", "v1")
    store.set_current("web", "v2")
    store.mark_outcome("web", "v3", "aborted")
    store.mark_outcome("web", "v4", "rolled_back")
    store.mark_outcome("web", "v5", "failed")
    store.mark_outcome("web", "v1", "aborted")  # proves nothing: still where rollback goes
    store.mark_outcome("web", "v2", "rolled_back")  # nor can it unseat what serves
    assert statuses(store) == {
        "v5": "failed",
        "v4": "rolled_back",
        "v3": "aborted",
        "v2": "current",
        "v1": "previous",
    }
    store.mark_outcome("web", "v3", "failed")  # a later deploy of it found it broken
    assert statuses(store)["v3"] == "failed"
    with pytest.raises(StoreError, match="current"):
        store.mark_outcome("web", "v2", "failed")
    with pytest.raises(NotFound):
        store.mark_outcome("web", "v9", "aborted")


def test_a_version_1_file_migrates_keeping_its_releases(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO schema_version VALUES (1)")
    insert = """INSERT INTO releases (service, version, spec_json, status, created_at)
        VALUES (?, ?, ?, ?, ?)"""
    spec = '{"command": "app", "cwd": ".", "env": []}'
    raw.execute(insert, ("web", "v1", spec, "current", 1.0))
    raw.execute(insert, ("web", "v2", spec, "new", 2.0))
    raw.commit()
    raw.close()
    with SqliteStore(path) as store:
        assert statuses(store) == {"v2": "new", "v1": "current"}
        store.mark_outcome("web", "v2", "aborted")
        assert statuses(store) == {"v2": "aborted", "v1": "current"}
        add(store, "v3")
        store.set_current("web", "v3")
        other = sqlite3.connect(path)
        with pytest.raises(sqlite3.IntegrityError):  # the one-current index came through
            other.execute("UPDATE releases SET status = 'current'")
        other.close()
        assert store.current("web") == "v3"
        assert store.previous("web") == "v1"


def test_a_failed_release_can_become_current(store: SqliteStore) -> None:
    add(store, "v1")
    store.mark_failed("web", "v1")
    store.set_current("web", "v1")
    assert store.current("web") == "v1"


# -- prune -----------------------------------------------------------------------


def test_prune_keeps_the_newest(store: SqliteStore, clock: Clock) -> None:
    add(store, "v1", "v2", "v3", "v4", "v5", clock=clock)
    assert store.prune("web", keep=2, protect=set()) == ["v3", "v2", "v1"]
    assert [r.version for r in store.releases("web")] == ["v5", "v4"]
    assert store.release("web", "v1") is None
    assert store.prune("web", keep=2, protect=set()) == []


def test_prune_never_drops_current_previous_or_protected(store: SqliteStore, clock: Clock) -> None:
    add(store, "v1", "v2", "v3", "v4", "v5", "v6", clock=clock)
    store.set_current("web", "v1")
    store.set_current("web", "v2")
    store.mark_failed("web", "v6")
    pruned = store.prune("web", keep=0, protect={"v4"})
    assert pruned == ["v6", "v5", "v3"]
    assert statuses(store) == {"v4": "new", "v2": "current", "v1": "previous"}


def test_prune_spares_releases_still_in_use(store: SqliteStore, clock: Clock) -> None:
    add(store, "v1", "v2", "v3", clock=clock)
    store.save_instance(Instance("i1", "web", "v1", port=20001))
    store.begin_deploy("web", "v2", "rolling", "{}")  # unfinished: recovery needs v2
    assert store.prune("web", keep=0, protect=set()) == ["v3"]


def test_prune_is_per_service(store: SqliteStore) -> None:
    store.add_release(release("v1", service="api"))
    add(store, "v1")
    assert store.prune("web", keep=0, protect=set()) == ["v1"]
    assert store.release("api", "v1") is not None


def test_prune_refuses_negative_keep(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="keep must be >= 0"):
        store.prune("web", keep=-1, protect=set())


# -- deploys and journal ---------------------------------------------------------


def test_begin_deploy_records_a_pending_deploy(store: SqliteStore) -> None:
    deploy_id = store.begin_deploy("web", "v2", "canary", '{"steps": []}')
    record = store.deploy(deploy_id)
    assert record is not None
    assert (record.id, record.service, record.version) == (deploy_id, "web", "v2")
    assert (record.strategy, record.plan_json) == ("canary", '{"steps": []}')
    assert (record.state, record.outcome, record.reason) == ("pending", None, "")
    assert (record.started_at, record.updated_at, record.finished_at) == (1_000.0, 1_000.0, None)
    assert store.deploy(deploy_id + 1) is None


def test_set_deploy_state(store: SqliteStore, clock: Clock) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")
    clock.advance(2)
    store.set_deploy_state(deploy_id, "gating")
    record = store.deploy(deploy_id)
    assert record is not None
    assert (record.state, record.updated_at) == ("gating", 1_002.0)


def test_set_deploy_state_refuses_outcomes_and_unknown_deploys(store: SqliteStore) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")
    with pytest.raises(StoreError, match="finish_deploy"):
        store.set_deploy_state(deploy_id, "succeeded")
    with pytest.raises(NotFound):
        store.set_deploy_state(deploy_id + 1, "gating")


def test_journal_keeps_order_seq_and_time(store: SqliteStore, clock: Clock) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")
    other = store.begin_deploy("api", "v1", "recreate", "{}")
    store.journal(deploy_id, 0, '{"kind": "start"}', "before")
    store.journal(other, 0, "{}", "before")
    clock.advance(1)
    store.journal(deploy_id, 0, '{"kind": "start"}', "after", "2 started")
    store.journal(deploy_id, 1, '{"kind": "wait_healthy"}', "before")
    entries = store.journal_entries(deploy_id)
    assert [(e.step_index, e.phase, e.detail) for e in entries] == [
        (0, "before", ""),
        (0, "after", "2 started"),
        (1, "before", ""),
    ]
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert [e.at for e in entries] == [1_000.0, 1_001.0, 1_001.0]
    assert {e.deploy_id for e in entries} == {deploy_id}
    assert entries[0].step_json == '{"kind": "start"}'
    assert len(store.journal_entries(other)) == 1


def test_journal_of_an_unknown_deploy_raises(store: SqliteStore) -> None:
    with pytest.raises(NotFound):
        store.journal(42, 0, "{}", "before")


def test_finish_deploy(store: SqliteStore, clock: Clock) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")
    clock.advance(7)
    store.finish_deploy(deploy_id, "rolled_back", "health gate timed out")
    record = store.deploy(deploy_id)
    assert record is not None
    assert (record.state, record.outcome) == ("rolled_back", "rolled_back")
    assert (record.reason, record.finished_at) == ("health gate timed out", 1_007.0)


def test_a_finished_deploy_is_history(store: SqliteStore) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")
    store.finish_deploy(deploy_id, "succeeded", "")
    with pytest.raises(StoreError, match="already finished"):
        store.finish_deploy(deploy_id, "failed", "again")
    with pytest.raises(StoreError, match="already finished"):
        store.set_deploy_state(deploy_id, "shifting")
    with pytest.raises(StoreError, match="already finished"):
        store.journal(deploy_id, 0, "{}", "before")
    with pytest.raises(NotFound):
        store.finish_deploy(deploy_id + 1, "failed", "")
    record = store.deploy(deploy_id)
    assert record is not None
    assert record.outcome == "succeeded"


def test_deploys_newest_first_with_limit(store: SqliteStore) -> None:
    ids = [store.begin_deploy("web", f"v{n}", "rolling", "{}") for n in range(5)]
    store.begin_deploy("api", "v1", "rolling", "{}")
    assert [d.id for d in store.deploys("web")] == ids[::-1]
    assert [d.version for d in store.deploys("web", limit=2)] == ["v4", "v3"]
    assert store.deploys("nothing") == []


def test_unfinished_deploys(store: SqliteStore) -> None:
    done = store.begin_deploy("web", "v1", "rolling", "{}")
    store.finish_deploy(done, "succeeded", "")
    first = store.begin_deploy("web", "v2", "rolling", "{}")
    second = store.begin_deploy("api", "v7", "blue_green", "{}")
    store.set_deploy_state(second, "shifting")
    unfinished = store.unfinished_deploys()
    assert [(d.id, d.state) for d in unfinished] == [(first, "pending"), (second, "shifting")]


# -- instances -------------------------------------------------------------------


def test_instances_upsert_filter_and_remove(store: SqliteStore) -> None:
    a = Instance("a", "web", "v1", port=20001, pid=123, pid_started=99.5, state="ready")
    b = Instance("b", "web", "v2", port=20002, host="10.0.0.2")
    c = Instance("c", "api", "v1", port=20003)
    for instance in (b, c, a):
        store.save_instance(instance)
    assert store.instances() == [c, a, b]
    assert store.instances("web") == [a, b]
    a.state = "draining"
    store.save_instance(a)
    assert store.instances("web")[0].state == "draining"
    store.remove_instance("a")
    store.remove_instance("nope")
    assert store.instances() == [c, b]
    assert store.instances("nothing") == []


# -- lock ------------------------------------------------------------------------


def test_acquire_then_others_are_refused(store: SqliteStore) -> None:
    lock = store.acquire_lock("web", ME, 1)
    assert lock is not None
    assert (lock.service, lock.owner, lock.deploy_id, lock.took_over_from) == ("web", ME, 1, None)
    assert (lock.acquired_at, lock.heartbeat_at) == (1_000.0, 1_000.0)
    assert store.acquire_lock("web", OTHER, 2) is None
    assert store.acquire_lock("web", ME, 3) is None  # one deploy per service per process too
    assert store.lock("web") == lock
    assert store.acquire_lock("api", OTHER, 4) is not None  # locks are per service


def test_heartbeat_and_release(store: SqliteStore, clock: Clock) -> None:
    store.acquire_lock("web", ME, 1)
    clock.advance(5)
    assert store.heartbeat("web", ME)
    assert not store.heartbeat("web", OTHER)
    lock = store.lock("web")
    assert lock is not None
    assert lock.heartbeat_at == 1_005.0
    assert not store.release_lock("web", OTHER)
    assert store.release_lock("web", ME)
    assert store.lock("web") is None
    assert not store.release_lock("web", ME)
    assert store.acquire_lock("web", OTHER, 2) is not None


def test_a_lock_of_a_dead_pid_is_taken_over(store: SqliteStore) -> None:
    dead = f"{HOST}:{dead_pid()}"
    store.acquire_lock("web", dead, 1)
    lock = store.acquire_lock("web", ME, 2)
    assert lock is not None
    assert (lock.owner, lock.deploy_id, lock.took_over_from) == (ME, 2, dead)
    assert store.lock("web") == lock


def test_a_dead_pid_on_another_host_waits_for_the_heartbeat(
    store: SqliteStore, clock: Clock
) -> None:
    elsewhere = f"not-{HOST}:{dead_pid()}"  # its pid means nothing here
    store.acquire_lock("web", elsewhere, 1)
    clock.advance(STALE_AFTER)
    assert store.acquire_lock("web", ME, 2) is None
    clock.advance(0.5)
    lock = store.acquire_lock("web", ME, 2)
    assert lock is not None
    assert lock.took_over_from == elsewhere


def test_an_old_heartbeat_is_taken_over_even_from_a_live_pid(path: Path, clock: Clock) -> None:
    with SqliteStore(path, clock=clock, stale_after=10) as store:
        store.acquire_lock("web", OTHER, 1)
        clock.advance(9)
        assert store.heartbeat("web", OTHER)
        clock.advance(9)
        assert store.acquire_lock("web", ME, 2) is None  # heartbeat 9 s old: fresh
        clock.advance(2)
        lock = store.acquire_lock("web", ME, 2)
        assert lock is not None
        assert lock.took_over_from == OTHER
        assert not store.heartbeat("web", OTHER)  # the old holder learns it lost the lock


def test_an_unparseable_owner_is_judged_by_heartbeat_only(store: SqliteStore, clock: Clock) -> None:
    store.acquire_lock("web", "ci-runner", 1)
    assert store.acquire_lock("web", ME, 2) is None
    clock.advance(STALE_AFTER + 1)
    assert store.acquire_lock("web", ME, 2) is not None


HOLD_LOCK = """
import sys
from zerodown.store import SqliteStore, local_owner
store = SqliteStore(sys.argv[1])
lock = store.acquire_lock("web", local_owner(), 1)
print("held" if lock else "refused", flush=True)
sys.stdin.readline()  # hold until the test says go, then exit without releasing
"""


def test_a_lock_held_by_another_process(path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "held"
        with SqliteStore(path) as store:
            assert store.acquire_lock("web", ME, 2) is None
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.wait(timeout=10) == 0
            lock = store.acquire_lock("web", ME, 2)  # its owner died holding it
            assert lock is not None
            assert lock.took_over_from == f"{HOST}:{child.pid}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- events ----------------------------------------------------------------------


def test_events_resume_after_an_id(store: SqliteStore, clock: Clock) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")
    first = store.add_event("web", deploy_id, "step", '{"i": 0}')
    clock.advance(1)
    second = store.add_event("api", None, "traffic", "{}")
    third = store.add_event("web", None, "traffic", "{}")
    assert first < second < third
    everything = store.events()
    assert [e.id for e in everything] == [first, second, third]
    assert (everything[0].service, everything[0].deploy_id) == ("web", deploy_id)
    assert (everything[0].kind, everything[0].data_json, everything[0].at) == (
        "step",
        '{"i": 0}',
        1_000.0,
    )
    assert [e.id for e in store.events(after_id=first)] == [second, third]
    assert [e.id for e in store.events(service="web")] == [first, third]
    assert [e.id for e in store.events(after_id=first, service="web")] == [third]
    assert [e.id for e in store.events(limit=2)] == [first, second]


def test_an_event_of_an_unknown_deploy_raises(store: SqliteStore) -> None:
    with pytest.raises(NotFound):
        store.add_event("web", 42, "step", "{}")


# -- restart and concurrency -----------------------------------------------------


def test_everything_survives_a_reopen(path: Path, clock: Clock) -> None:
    instance = Instance("i1", "web", "v2", port=20001, pid=4242, pid_started=12.5, state="ready")
    with SqliteStore(path, clock=clock) as before:
        add(before, "v1", "v2", clock=clock)
        before.set_current("web", "v1")
        deploy_id = before.begin_deploy("web", "v2", "rolling", '{"steps": [1]}')
        before.set_deploy_state(deploy_id, "shifting")
        before.journal(deploy_id, 0, "{}", "before")
        before.journal(deploy_id, 0, "{}", "after")
        before.save_instance(instance)
        lock = before.acquire_lock("web", ME, deploy_id)
        before.add_event("web", deploy_id, "step", "{}")
        expected = (
            before.releases("web"),
            before.release("web", "v2"),
            before.deploys("web"),
            before.journal_entries(deploy_id),
            before.events(),
        )
        # no finish_deploy: the daemon "dies" here
    with SqliteStore(path, clock=clock) as after:
        assert (
            after.releases("web"),
            after.release("web", "v2"),
            after.deploys("web"),
            after.journal_entries(deploy_id),
            after.events(),
        ) == expected
        assert (after.current("web"), after.previous("web")) == ("v1", None)
        assert [d.id for d in after.unfinished_deploys()] == [deploy_id]
        assert after.instances() == [instance]
        assert after.lock("web") == lock


def test_two_stores_on_one_file_see_each_other(path: Path) -> None:
    with SqliteStore(path) as one, SqliteStore(path) as two:
        one.add_release(release("v1"))
        two.set_current("web", "v1")
        assert one.current("web") == "v1"
        assert one.acquire_lock("web", ME, 1) is not None
        assert two.acquire_lock("web", OTHER, 2) is None


OPEN_AND_ADD = """
import sys
from zerodown.release import Release
from zerodown.store import SqliteStore
with SqliteStore(sys.argv[1]) as store:
    store.add_release(Release("web", sys.argv[2], "run"))
"""


def test_processes_opening_a_new_file_at_once(path: Path) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", OPEN_AND_ADD, str(path), f"v{n}"]) for n in range(4)
    ]
    assert [child.wait(timeout=30) for child in children] == [0, 0, 0, 0]
    with SqliteStore(path) as store:
        assert sorted(r.version for r in store.releases("web")) == ["v0", "v1", "v2", "v3"]


def test_threads_share_one_store(store: SqliteStore) -> None:
    deploy_id = store.begin_deploy("web", "v2", "rolling", "{}")

    def write(step: int) -> None:
        for _ in range(25):
            store.journal(deploy_id, step, "{}", "after")

    threads = [threading.Thread(target=write, args=(step,)) for step in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    entries = store.journal_entries(deploy_id)
    assert len(entries) == 200
    assert len({e.seq for e in entries}) == 200
    assert {e.step_index for e in entries} == set(range(8))
