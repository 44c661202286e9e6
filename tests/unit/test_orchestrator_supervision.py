"""What the orchestrator does between deploys and across its own restarts,
end to end: a crashed instance of the current release is replaced (and no
table routes it once dead), a blue-green release kept warm is retired after
scale_down_delay, capacity is restored when a rollback finds the old release
short, and a new daemon on the same store adopts what still runs and
restores the rest. Histories read as in test_orchestrator_strategies.

The crash-loop path (restarts that keep failing) is left to the tests of
crash supervision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fakes import FakeMachine, FakeRuntime, Rig, next_event, rig, web
from zerodown.release import Release
from zerodown.store.sqlite import SqliteStore

MANUAL = '{ steps = [{ weight = 25, pause = "manual" }], min_requests = 10 }'


async def serving_v1(r: Rig) -> int:
    assert (await r.deploy("v1"))["outcome"] == "succeeded"
    return len(r.dataplane.tables)


def routed_since(r: Rig, mark: int) -> set[str]:
    """Every address any table from index `mark` on routed, either pool."""
    return set().union(
        *(r.dataplane.addresses("web", n) for n in range(mark, len(r.dataplane.tables)))
    )


@contextlib.asynccontextmanager
async def one_host() -> AsyncIterator[tuple[FakeMachine, SqliteStore]]:
    """A machine and a store that outlive one daemon, as on a real host."""
    machine, store = FakeMachine(), SqliteStore(":memory:")
    try:
        yield machine, store
    finally:
        await machine.shutdown()
        store.close()


def test_a_crashed_instance_of_the_current_release_is_replaced() -> None:
    async def run() -> None:
        async with rig(web()) as r:
            mark = await serving_v1(r)
            crashed, survivor = r.runtime.of_version("v1")
            await r.runtime.crash(crashed.id, code=-9)

            def replaced() -> bool:
                routed = r.dataplane.addresses("web")
                return len(routed) == 2 and crashed.address not in routed

            await r.dataplane.changes.until(replaced, "a replacement in the table")
            # Out of the table at once, back to two once the replacement passed its gate.
            assert r.dataplane.history("web", since=mark) == ["v1", "v1 v1"]
            assert crashed.address not in routed_since(r, mark)
            assert r.runtime.starts == [("v1", 2), ("v1", 1)]
            replacement = r.runtime.started[-1]
            assert r.dataplane.addresses("web") == {survivor.address, replacement.address}
            assert r.machine.apps[replacement.id].requests >= 1  # gated before routed
            assert {i.id for i in r.store.instances("web")} == {survivor.id, replacement.id}
            (event,) = r.events("instance_crashed")
            assert (event["id"], event["version"], event["code"]) == (crashed.id, "v1", -9)
            assert event["how"] == "killed by SIGKILL"
            status = r.status()
            assert [i["state"] for i in status["instances"]] == ["ready", "ready"]
            assert status["crash_loop"] is None
            assert status["current"] == "v1"

    asyncio.run(run())


def test_a_crashed_standby_is_not_replaced() -> None:
    async def run() -> None:
        config = web(strategy='"blue_green"', blue_green='{ scale_down_delay = "10m" }')
        async with rig(config) as r:
            await serving_v1(r)
            assert (await r.deploy("v2"))["outcome"] == "succeeded"
            mark = len(r.dataplane.tables)
            standby = r.runtime.of_version("v1")[0]
            await r.runtime.crash(standby.id)
            await r.dataplane.changes.until(lambda: len(r.dataplane.tables) > mark, "an apply")
            await next_event(r.orch, "instance_crashed")
            assert r.dataplane.history("web", since=mark) == ["v2 v2"]
            assert r.runtime.starts == [("v1", 2), ("v2", 2)]
            states = sorted((i["version"], i["state"]) for i in r.status()["instances"])
            assert states == [("v1", "standby"), ("v2", "ready"), ("v2", "ready")]

    asyncio.run(run())


def test_a_warm_blue_green_release_is_retired_after_scale_down_delay() -> None:
    async def run() -> None:
        config = web(strategy='"blue_green"', blue_green='{ scale_down_delay = "150ms" }')
        async with rig(config) as r:
            await serving_v1(r)
            blue = [i.id for i in r.runtime.of_version("v1")]
            assert (await r.deploy("v2"))["outcome"] == "succeeded"
            mark = len(r.dataplane.tables)
            states = sorted((i["version"], i["state"]) for i in r.status()["instances"])
            assert states == [("v1", "standby")] * 2 + [("v2", "ready")] * 2
            assert r.runtime.stops == []  # kept warm: a rollback now is instant

            stopped = await next_event(r.orch, "instances_stopped")
            assert sorted(stopped["data"]["ids"]) == sorted(r.runtime.stops) == sorted(blue)
            assert [i["version"] for i in r.status()["instances"]] == ["v2", "v2"]
            assert {i.version for i in r.store.instances("web")} == {"v2"}
            assert len(r.dataplane.tables) == mark  # out of traffic already: no table to change
            assert r.releases() == {"v2": "current", "v1": "previous"}

    asyncio.run(run())


def test_an_abort_restores_the_capacity_the_old_release_lost_meanwhile() -> None:
    async def run() -> None:
        async with rig(web(strategy='"canary"', canary=MANUAL)) as r:
            mark = await serving_v1(r)
            deploy_id = await r.orch.deploy("web", "v2")
            await next_event(r.orch, "step", lambda e: e["data"]["step"]["kind"] == "pause")
            lost, kept = r.runtime.of_version("v1")
            crash = len(r.dataplane.tables)
            await r.runtime.crash(lost.id)  # not replaced while the deploy runs
            r.orch.abort("web")
            view = await r.outcome(deploy_id)
            assert view["outcome"] == "aborted"
            assert r.runtime.starts == [("v1", 2), ("v2", 2), ("v1", 1)]
            restored = r.runtime.started[-1]
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | canary v2 v2 25%",
                "v1 | canary v2 v2 25%",  # the crashed one out at once
                "v1 v2~ v2~",
                "v1 v1 v2~ v2~",  # back to full strength before v2 leaves
                "v1 v1",
            ]
            assert r.dataplane.addresses("web") == {kept.address, restored.address}
            assert lost.address not in routed_since(r, crash)

    asyncio.run(run())


def test_a_restarted_daemon_adopts_what_runs_and_restores_capacity() -> None:
    async def run() -> None:
        async with one_host() as (machine, store):
            async with rig(web(), machine=machine, store=store) as first:
                await serving_v1(first)
                dead, alive = first.runtime.of_version("v1")
            await machine.kill(dead.id)  # died while no daemon watched: nobody told
            async with rig(web(), machine=machine, store=store) as second:
                assert second.runtime.adopted == [alive.id]
                assert second.runtime.starts == [("v1", 1)]
                restored = second.runtime.started[0]
                # One table, once the adopted and the new instance passed their gate.
                assert second.dataplane.history("web") == ["v1 v1"]
                assert second.dataplane.addresses("web") == {alive.address, restored.address}
                assert {i.id for i in store.instances("web")} == {alive.id, restored.id}
                assert second.status()["current"] == "v1"

    asyncio.run(run())


def test_a_restarted_daemon_starts_even_if_the_restored_capacity_never_becomes_healthy() -> None:
    async def run() -> None:
        config = web(deploy_timeout='"150ms"')
        async with one_host() as (machine, store):
            async with rig(config, machine=machine, store=store) as first:
                await serving_v1(first)
                dead, alive = first.runtime.of_version("v1")
            await machine.kill(dead.id)
            machine.set_healthy(f"web-v1-{machine.serial + 1}", False)  # the next one started
            async with rig(config, machine=machine, store=store) as second:
                assert second.runtime.starts == [("v1", 1)]
                assert second.dataplane.addresses("web") == {alive.address}
                assert second.status()["current"] == "v1"
                (failed,) = second.events("restore_failed")
                assert failed["instances"] == [f"web-v1-{machine.serial}"]
                assert "1 of 2 serve" in failed["reason"]
                assert second.runtime.stops == failed["instances"]  # not left running

    asyncio.run(run())


def test_a_deploy_the_daemon_died_in_is_closed_and_its_instances_drained() -> None:
    async def run() -> None:
        config = web(strategy='"canary"')
        async with one_host() as (machine, store):
            async with rig(config, machine=machine, store=store) as first:
                await serving_v1(first)
            # What a daemon killed during a deploy of v2 leaves behind: the
            # deploy with no outcome, v2 running and recorded (the data plane
            # may have served it meanwhile).
            deploy_id = store.begin_deploy("web", "v2", "canary", "[]")
            release = Release("web", "v2", "app --port {port} --version {version}")
            store.add_release(release)
            v2 = await FakeRuntime(machine).start(release, 2)
            for instance in v2:
                instance.state = "ready"
                store.save_instance(instance)
            async with rig(config, machine=machine, store=store) as second:
                view = await second.outcome(deploy_id)
                assert view["outcome"] == "rolled_back"
                assert "the daemon stopped during this deploy" in view["reason"]
                assert len(second.runtime.adopted) == 4
                stopped = await next_event(second.orch, "instances_stopped")
                assert sorted(stopped["data"]["ids"]) == sorted(i.id for i in v2)
                # Drained first (out of the table, requests in flight finished), then stopped.
                assert second.dataplane.history("web") == ["v1 v1 v2~ v2~", "v1 v1"]
                assert sorted(d.address for d in second.dataplane.drains) == sorted(
                    i.address for i in v2
                )
                assert sorted(second.runtime.stops) == sorted(i.id for i in v2)
                assert second.runtime.starts == []
                assert second.releases() == {"v2": "rolled_back", "v1": "current"}
                assert {i.version for i in store.instances("web")} == {"v1"}

    asyncio.run(run())
