"""verify's virtual users against a real demo app, without a daemon: the I/O
half of `verify --sessions` (verify/users.py) and its report, in about a
second each. The e2e tests (tests/e2e/test_sessions.py) run it through deploys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from harness import reserved_port
from redis_harness import RedisServer
from zerodown.demo.process import AppProcess, spawn_app
from zerodown.verify import LoadSpec, verify
from zerodown.verify.report import Report
from zerodown.verify.users import SessionSpec, UserGroup

USERS = 4
SPEC = SessionSpec(USERS, interval=0.05)


@pytest.fixture
def memory_app() -> Iterator[list[AppProcess]]:
    """A demo on --sessions memory on a fixed port; the test may replace it (same port)."""
    apps = [spawn_app("v1", "--sessions", "memory", port=reserved_port())]
    yield apps
    for app in apps:
        app.stop(0)


def load_spec(app: AppProcess) -> LoadSpec:
    return LoadSpec(f"http://{app.address}/", concurrency=1, rate=50)


def test_users_who_stay_logged_in_are_kept(memory_app: list[AppProcess]) -> None:
    app = memory_app[0]

    async def go() -> Report:
        group = UserGroup.of(SPEC, f"http://{app.address}/", {})
        report, _ = await verify(load_spec(app), lambda: asyncio.sleep(0.4), users=group)
        return report

    report = asyncio.run(go())
    assert report.sessions is not None
    assert report.sessions.line() == f"sessions: {USERS} kept, 0 lost"
    assert report.sessions.checks >= USERS * 3, "the users did not keep asking"
    assert report.to_json()["sessions"]["kept"] == USERS
    assert f"sessions: {USERS} kept, 0 lost" in report.summary()


def test_an_instance_replaced_mid_run_loses_its_sessions_and_says_why(
    memory_app: list[AppProcess],
) -> None:
    app = memory_app[0]

    async def replace() -> None:
        await asyncio.sleep(0.2)
        # Off the loop, so the users go on asking while no instance listens.
        await asyncio.to_thread(app.stop)  # its memory, and every session in it, goes
        new = await asyncio.to_thread(spawn_app, "v2", "--sessions", "memory", port=app.port)
        memory_app.append(new)
        await asyncio.sleep(0.2)

    async def go() -> Report:
        group = UserGroup.of(SPEC, f"http://{app.address}/", {})
        report, _ = await verify(load_spec(app), replace, users=group)
        return report

    report = asyncio.run(go())
    said = report.sessions
    assert said is not None
    assert (said.kept, said.lost, said.lost_before, said.lost_during) == (0, USERS, 0, USERS)
    assert said.errors > 0, "requests while no instance listened are errors, not losses"
    assert "the instances that held them stopped" in said.why[0]
    assert "shared store" in said.why[1]


def test_users_that_cannot_log_in_are_counted_with_the_reason() -> None:
    app = spawn_app("v1", "--error-rate", "1")  # every answer but /health's is a 500
    try:

        async def go() -> Report:
            group = UserGroup.of(SessionSpec(2), f"http://{app.address}/", {})
            report, _ = await verify(load_spec(app), lambda: asyncio.sleep(0.1), users=group)
            return report

        report = asyncio.run(go())
    finally:
        app.stop(0)
    said = report.sessions
    assert said is not None
    assert said.line() == "sessions: 0 kept, 0 lost, 2 not logged in"
    assert said.checks == 0, "a user who never logged in has nothing to check"
    assert "could not log in before the load (500 injected error)" in said.why[0], said.why


def test_sessions_a_redis_restart_lost_are_reported_lost_not_silently_kept(
    redis_server: RedisServer,
) -> None:
    app = spawn_app("v1", "--sessions", "redis", "--redis-url", redis_server.url)

    async def outage() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(redis_server.restart_empty)  # no AOF, no RDB: all gone
        await asyncio.sleep(0.2)

    async def go() -> Report:
        group = UserGroup.of(SPEC, f"http://{app.address}/", {})
        report, _ = await verify(load_spec(app), outage, users=group)
        return report

    try:
        report = asyncio.run(go())
    finally:
        app.stop(0)
    said = report.sessions
    assert said is not None
    assert (said.kept, said.lost, said.lost_during) == (0, USERS, USERS), said
