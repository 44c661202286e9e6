"""Deploys that must not go through, end to end: whatever fails, the old
release keeps serving (the last table routes v1 only) and the new one is
recorded as failed. Histories read as in test_orchestrator_strategies."""

from __future__ import annotations

import asyncio

import pytest

from fakes import PoolTraffic, Rig, next_event, rig, web
from zerodown.errors import DeployBusy, NotDeployable, UnknownService

CANARY = (
    '{ steps = [{ weight = 10, pause = "20ms" }, { weight = 50, pause = "20ms" }], '
    "min_requests = 10 }"
)


async def serving_v1(r: Rig) -> int:
    assert (await r.deploy("v1"))["outcome"] == "succeeded"
    return len(r.dataplane.tables)


def v2_never_routed(r: Rig) -> None:
    v2 = {i.address for i in r.runtime.started if i.version == "v2"}
    assert v2, "no v2 instance started"
    assert all(not (r.dataplane.addresses("web", n) & v2) for n in range(len(r.dataplane.tables)))


def test_a_release_that_never_becomes_healthy_is_rolled_back_and_v1_serves() -> None:
    async def run() -> None:
        async with rig(web(deploy_timeout='"150ms"')) as r:
            mark = await serving_v1(r)
            r.machine.set_healthy("v2", False)
            view = await r.deploy("v2")
            assert view["outcome"] == "rolled_back"
            assert view["reason"].startswith("not healthy within 0.15s: web-v2-3 (port ")
            assert "failed its health check" in view["reason"]
            failed = [s for s in view["steps"] if s["phase"] == "failed"]
            assert [s["kind"] for s in failed] == ["wait_healthy"]
            assert r.dataplane.history("web", since=mark) in ([], ["v1 v1"])
            assert r.dataplane.history("web")[-1] == "v1 v1"
            v2_never_routed(r)
            assert r.runtime.starts == [("v1", 2), ("v2", 1)]
            assert r.runtime.stops == ["web-v2-3"]
            assert r.releases() == {"v2": "failed", "v1": "current"}
            assert {i.version for i in r.store.instances("web")} == {"v1"}
            status = r.status()
            assert status["current"] == "v1"
            assert status["traffic"] == {"v1": 100.0}
            assert status["deploying"] is None

    asyncio.run(run())


def test_a_canary_worse_than_stable_is_rolled_back_at_its_first_step() -> None:
    async def run() -> None:
        async with rig(web(strategy='"canary"', canary=CANARY)) as r:
            mark = await serving_v1(r)
            r.dataplane.serve("web", "stable", PoolTraffic(80, errors=0))
            r.dataplane.serve("web", "canary", PoolTraffic(20, errors=10))
            view = await r.deploy("v2")
            assert view["outcome"] == "rolled_back"
            assert view["reason"].startswith("error rate 50.00% (10/20) on canary vs 0.00%")
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | canary v2 v2 10%",
                "v1 v1 v2~ v2~",  # the canary leaves; its requests in flight finish
                "v1 v1",
            ]
            assert sorted(d.address for d in r.dataplane.drains) == sorted(
                i.address for i in r.runtime.started if i.version == "v2"
            )
            assert sorted(r.runtime.stops) == ["web-v2-3", "web-v2-4"]
            assert r.releases() == {"v2": "failed", "v1": "current"}
            events = r.events("rolling_back")
            assert len(events) == 1
            assert events[0]["reason"] == view["reason"]

    asyncio.run(run())


def test_a_new_instance_that_crashes_in_its_gate_fails_the_deploy_at_once() -> None:
    async def run() -> None:
        async with rig(web()) as r:
            mark = await serving_v1(r)
            r.machine.set_healthy("v2", False)  # held in its gate until it crashes
            deploy_id = await r.orch.deploy("web", "v2")
            await r.runtime.changes.until(lambda: bool(r.runtime.of_version("v2")), "v2 to start")
            (new,) = r.runtime.of_version("v2")
            await r.runtime.crash(new.id, code=3)
            view = await r.outcome(deploy_id)
            assert view["outcome"] == "rolled_back"
            assert view["reason"] == f"instance {new.id} of v2 crashed (exit 3)"
            crashed = r.events("instance_crashed")
            assert [(e["id"], e["version"], e["code"]) for e in crashed] == [(new.id, "v2", 3)]
            # A crash of the release being deployed fails it; nothing restarts it.
            assert r.runtime.starts == [("v1", 2), ("v2", 1)]
            assert r.dataplane.history("web", since=mark) in ([], ["v1 v1"])
            v2_never_routed(r)
            assert r.releases() == {"v2": "failed", "v1": "current"}

    asyncio.run(run())


def test_a_deploy_of_the_current_release_or_beside_a_running_one_is_refused() -> None:
    async def run() -> None:
        async with rig(web()) as r:
            await serving_v1(r)
            with pytest.raises(NotDeployable, match="already the current release"):
                await r.orch.deploy("web", "v1")
            r.machine.set_healthy("v2", False)  # held in its gate
            running = await r.orch.deploy("web", "v2")
            for version in ("v3", "v2"):
                with pytest.raises(DeployBusy):
                    await r.orch.deploy("web", version)
            with pytest.raises(UnknownService):
                await r.orch.deploy("api", "v1")
            r.orch.abort("web")
            assert (await r.outcome(running))["outcome"] == "aborted"
            # The refused deploys left no release and no deploy record behind.
            assert r.releases() == {"v2": "aborted", "v1": "current"}
            assert [d.version for d in r.store.deploys("web")] == ["v2", "v1"]

    asyncio.run(run())


def test_a_rolling_deploy_failing_halfway_brings_v1_back_to_full_strength() -> None:
    async def run() -> None:
        async with rig(web(deploy_timeout='"150ms"')) as r:
            mark = await serving_v1(r)
            first_v1 = r.runtime.of_version("v1")[0]
            r.machine.set_healthy("web-v2-4", False)  # the second batch's instance
            view = await r.deploy("v2")
            assert view["outcome"] == "rolled_back"
            assert "web-v2-4" in view["reason"]
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 v2",
                "v1 v1~ v2",
                "v1 v2",  # one v1 gone when the second batch failed its gate
                "v1 v2~",  # v2 takes no new request: one instance serves until v1 is back
                "v1 v1 v2~",
                "v1 v1",
            ]
            assert r.runtime.starts == [("v1", 2), ("v2", 1), ("v2", 1), ("v1", 1)]
            assert r.runtime.stops[0] == first_v1.id
            assert sorted(r.runtime.stops[1:]) == ["web-v2-3", "web-v2-4"]
            assert r.releases() == {"v2": "failed", "v1": "current"}

    asyncio.run(run())


def test_a_failed_recreate_starts_the_old_release_again_and_ends_the_hold() -> None:
    async def run() -> None:
        async with rig(web(strategy='"recreate"', deploy_timeout='"150ms"')) as r:
            mark = await serving_v1(r)
            r.machine.set_healthy("v2", False)
            view = await r.deploy("v2")
            assert view["outcome"] == "rolled_back"
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | hold",
                "v1~ v1~ | hold",
                "- | hold",  # v2 never passed its gate: requests still held
                "v1 v1 | hold",
                "v1 v1",
            ]
            assert r.runtime.starts == [("v1", 2), ("v2", 2), ("v1", 2)]
            v2_never_routed(r)
            assert {i.version for i in r.store.instances("web")} == {"v1"}

    asyncio.run(run())


def test_a_canary_instance_crashing_in_traffic_fails_the_deploy_at_once() -> None:
    async def run() -> None:
        manual = '{ steps = [{ weight = 25, pause = "manual" }], min_requests = 10 }'
        async with rig(web(strategy='"canary"', canary=manual)) as r:
            mark = await serving_v1(r)
            deploy_id = await r.orch.deploy("web", "v2")
            await next_event(r.orch, "step", lambda e: e["data"]["step"]["kind"] == "pause")
            crashed, other = r.runtime.of_version("v2")
            crash = len(r.dataplane.tables)
            await r.runtime.crash(crashed.id)
            view = await r.outcome(deploy_id)
            assert view["outcome"] == "rolled_back"
            assert view["reason"] == f"instance {crashed.id} of v2 crashed (exit 1)"
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | canary v2 v2 25%",
                "v1 v1 | canary v2 25%",  # out of the table at once
                "v1 v1 v2~",
                "v1 v1",
            ]
            later = range(crash, len(r.dataplane.tables))
            assert all(crashed.address not in r.dataplane.addresses("web", n) for n in later)
            assert r.runtime.stops == [other.id]  # the crashed one needs no stop

    asyncio.run(run())
