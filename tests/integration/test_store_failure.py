"""A state store that fails mid-deploy (issue 8, item 6), on a real full database.

The database is made full for real: SQLite's `max_page_count` pins the file
at the pages it has, and ballast rows take the free pages and the room left
in the journal's and the events' last pages (each table has pages of its
own), so the next journal entry fails with SQLite's own "database or disk is
full", as on a full disk. The daemon runs in this process (to reach its store's
connection), with real app processes, a real proxy on a real port.

Before: the deploy stayed `rolling_back`, `wait` never returned, traffic
stayed on the failed release and, after the next deploy, one of its
instances was still routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from zerodown.config import load_config
from zerodown.control import daemon as daemon_module
from zerodown.control.daemon import Daemon
from zerodown.deploy.contract import DeployView
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.store import SqliteStore, StoreError

DEADLINE = 30.0  # bounds a wait only
POLL = 0.02
REQUESTS = 12

CONFIG = """
[proxy]
listen = ["127.0.0.1:{listen}"]
admin = "127.0.0.1:0"
state_dir = {state_dir}

[services.web]
route = {{ host = "*", path = "/" }}
command = {command}
instances = 1
strategy = "{strategy}"
health = {{ path = "/health", interval = "200ms", rise = 1 }}
ports = "{low}-{high}"
drain_timeout = "2s"
stop_grace = "2s"
deploy_timeout = "20s"
canary = {{ steps = [{{ weight = 50, pause = "manual" }}] }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, strategy: str = "canary") -> tuple[Path, int]:
    listen = free_port()
    low = random.randrange(30000, 32768 - 100)
    command = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    path = tmp_path / "zerodown.toml"
    path.write_text(
        CONFIG.format(
            listen=listen,
            state_dir=json.dumps(str(tmp_path / "state")),
            command=json.dumps(command),
            strategy=strategy,
            low=low,
            high=low + 99,
        )
    )
    return path, listen


BALLAST = (
    "CREATE TABLE IF NOT EXISTS ballast (junk BLOB)",
    "INSERT INTO ballast VALUES (zeroblob(?))",  # takes the free pages
    # Ballast of deploy 1 (finished) with step -1, and of no service: no view shows them.
    "INSERT INTO journal (deploy_id, step_index, step_json, phase, detail, at)"
    " VALUES (1, -1, '{}', 'failed', zeroblob(?), 0)",
    "INSERT INTO events (service, deploy_id, kind, data_json, at)"
    " VALUES ('', NULL, 'ballast', zeroblob(?), 0)",
)


def fill_up(store: SqliteStore) -> None:
    """No page beyond those the file has, and no room left in those we write to."""
    with store._mutex:
        db = store._db
        db.execute(BALLAST[0])
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        for insert in BALLAST[1:]:
            for size in (4096, 512, 64, 8, 1):
                with contextlib.suppress(sqlite3.OperationalError):
                    while True:
                        db.execute(insert, (size,))


def make_room(store: SqliteStore) -> None:
    """Space again, as when the disk is cleaned up."""
    with store._mutex:
        db = store._db
        db.execute("PRAGMA max_page_count = 1073741823")
        db.execute("DROP TABLE ballast")
        db.execute("DELETE FROM journal WHERE step_index = -1")
        db.execute("DELETE FROM events WHERE kind = 'ballast'")


async def until(what: str, check: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(POLL)


async def version_served(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "x-version":
            return value.strip()
    raise AssertionError(f"no X-Version in {head!r}")


async def served(port: int) -> set[str]:
    return {await version_served(port) for _ in range(REQUESTS)}


async def deploy_to_pause(orch: Orchestrator, version: str) -> int:
    deploy_id = await orch.deploy("web", version)
    deployment = orch.deployments["web"]
    await until(f"{version} at its manual pause", lambda: deployment.waiting_for_promote)
    return deploy_id


def outcome(view: DeployView | None) -> str | None:
    return None if view is None else view.outcome


def routed_versions(orch: Orchestrator) -> set[str]:
    fleet = orch.fleets["web"]
    return {i.version for i in fleet.instances if i.id in fleet.routed}


def test_a_full_store_mid_deploy_fails_it_with_traffic_on_the_recorded_release(
    tmp_path: Path,
) -> None:
    config, listen = write_config(tmp_path)

    async def body() -> None:
        daemon = Daemon(load_config(config))
        await daemon.start()
        try:
            assert daemon.orchestrator is not None
            assert daemon.store is not None
            await scenario(daemon.orchestrator, daemon.store, listen)
        finally:
            await daemon.stop()

    uvloop.run(asyncio.wait_for(body(), DEADLINE * 3))


async def scenario(orch: Orchestrator, store: SqliteStore, listen: int) -> None:
    first = await orch.deploy("web", "v1")
    assert outcome(await orch.wait(first, DEADLINE)) == "succeeded"
    second = await deploy_to_pause(orch, "v2")
    assert routed_versions(orch) == {"v1", "v2"}  # the canary takes half the traffic

    fill_up(store)
    orch.promote("web")  # the pause's journal entry is the first write that fails
    view = await orch.wait(second, DEADLINE)

    # The CLI hears the ending and why, although the store could not record it.
    assert view is not None, view
    assert view.outcome == "failed", view
    assert (view.reason or "").startswith("state store write failed: database or disk is full")
    assert (view.reason or "").endswith("traffic left on v1"), view.reason or ""
    assert "web" not in orch.deployments
    # Memory, store, data plane and processes agree: v1 serves, v2 is gone.
    fleet = orch.fleets["web"]
    recorded = store.instances("web")
    assert fleet.current == store.current("web") == "v1"
    assert [i.version for i in fleet.instances] == ["v1"]
    assert fleet.routed == {i.id for i in fleet.instances} <= {i.id for i in recorded}
    assert [i.version for i in orch.runtimes["web"].instances()] == ["v1"]
    assert await served(listen) == {"v1"}

    # Room again: the next deploy replaces v1, and no v2 instance is left routed.
    make_room(store)
    third = await deploy_to_pause(orch, "v3")
    orch.promote("web")
    assert outcome(await orch.wait(third, DEADLINE)) == "succeeded"
    assert routed_versions(orch) == {"v3"}
    assert await served(listen) == {"v3"}
    assert store.current("web") == "v3"


class FullAtSetCurrent(SqliteStore):
    """The real store, whose `set_current` fails as on a full disk while `full`:
    the one write that cannot be made to fail alone by filling the file."""

    full = False

    def set_current(self, service: str, version: str) -> None:
        if self.full:
            cause = sqlite3.OperationalError("database or disk is full")
            raise StoreError(f"store: {cause}") from cause
        super().set_current(service, version)


def test_a_store_failing_once_the_old_release_is_gone_leaves_the_new_one_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, listen = write_config(tmp_path, strategy="rolling")
    monkeypatch.setattr(daemon_module, "SqliteStore", FullAtSetCurrent)

    async def body() -> None:
        daemon = Daemon(load_config(config))
        await daemon.start()
        try:
            assert daemon.orchestrator is not None
            assert daemon.store is not None
            orch, store = daemon.orchestrator, daemon.store
            assert isinstance(store, FullAtSetCurrent)
            first = await orch.deploy("web", "v1")
            assert outcome(await orch.wait(first, DEADLINE)) == "succeeded"
            store.full = True
            view = await orch.wait(await orch.deploy("web", "v2"), DEADLINE)
            assert view is not None, view
            assert view.outcome == "failed", view
            # Rolling stopped v1 before the end: v2 is all that can serve.
            assert (view.reason or "") == (
                "state store write failed: database or disk is full; traffic left on v2, "
                "which the store could not record as current"
            )
            assert orch.fleets["web"].current == "v2"
            assert routed_versions(orch) == {"v2"}
            assert await served(listen) == {"v2"}
            store.full = False
            third = await orch.deploy("web", "v3")
            assert outcome(await orch.wait(third, DEADLINE)) == "succeeded"
            assert routed_versions(orch) == {"v3"}
            assert [i.version for i in orch.runtimes["web"].instances()] == ["v3"]
            assert await served(listen) == {"v3"}
        finally:
            await daemon.stop()

    uvloop.run(asyncio.wait_for(body(), DEADLINE * 3))
