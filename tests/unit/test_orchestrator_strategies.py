"""Every strategy, end to end through a real Orchestrator: v1 serves, v2 is
deployed, and the tables the data plane got show traffic moving step by step.

In the histories (fakes.describe) each word is one routed target's version,
"~" marks one draining, "canary ... N%" the canary pool and its weight,
"hold" requests held while nothing serves.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from fakes import Json, PoolTraffic, Rig, as_json, rig, service_toml, web
from zerodown.deploy import executor

CANARY = (
    '{ steps = [{ weight = 10, pause = "20ms" }, { weight = 50, pause = "20ms" }], '
    "min_requests = 10 }"
)


async def serving_v1(r: Rig) -> int:
    """v1 deployed (a first deploy: start all, gate, route); the index of the next table."""
    view = await r.deploy("v1")
    assert view["outcome"] == "succeeded"
    assert r.dataplane.history("web") == ["-", "v1 v1"]
    return len(r.dataplane.tables)


def test_the_first_deploy_starts_gates_and_routes_the_whole_set() -> None:
    async def run() -> None:
        async with rig(web(instances="3")) as r:
            view = await r.deploy("v1")
            assert view["outcome"] == "succeeded"
            assert view["reason"] is None
            kinds = [s["kind"] for s in view["steps"] if s["phase"] == "after"]
            assert kinds == ["start", "wait_healthy", "set_traffic"]
            assert r.runtime.starts == [("v1", 3)]
            # Routed only once every instance answered its health check.
            assert r.dataplane.history("web") == ["-", "v1 v1 v1"]
            assert all(r.machine.apps[i.id].requests >= 1 for i in r.runtime.started)
            assert r.store.current("web") == "v1"
            assert r.releases() == {"v1": "current"}
            status = r.status()
            assert status["current"] == "v1"
            assert status["traffic"] == {"v1": 100.0}
            assert [i["state"] for i in status["instances"]] == ["ready"] * 3

    asyncio.run(run())


def test_rolling_replaces_one_instance_at_a_time_start_first() -> None:
    async def run() -> None:
        async with rig(web(strategy='"rolling"')) as r:
            mark = await serving_v1(r)
            old = [i.address for i in r.runtime.of_version("v1")]
            view = await r.deploy("v2")
            assert view["outcome"] == "succeeded"
            # max_surge = 1, max_unavailable = 0: never fewer than 2 serving.
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 v2",
                "v1 v1~ v2",
                "v1 v2",
                "v1 v2 v2",
                "v1~ v2 v2",
                "v2 v2",
            ]
            assert r.runtime.starts == [("v1", 2), ("v2", 1), ("v2", 1)]
            assert [d.address for d in r.dataplane.drains] == old
            assert {d.timeout for d in r.dataplane.drains} == {0.1}  # drain_timeout
            assert r.runtime.stops == [i.id for i in r.runtime.started[:2]]
            assert r.releases() == {"v2": "current", "v1": "previous"}
            assert {i.version for i in r.store.instances("web")} == {"v2"}

    asyncio.run(run())


def test_blue_green_previews_green_then_switches_in_one_table() -> None:
    async def run() -> None:
        config = web(strategy='"blue_green"', blue_green='{ scale_down_delay = "0s" }')
        async with rig(config) as r:
            mark = await serving_v1(r)
            view = await r.deploy("v2")
            assert view["outcome"] == "succeeded"
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | canary v2 v2 0%",  # green reachable by the preview header only
                "v1~ v1~ v2 v2",  # the switch: all new requests to green at once
                "v2 v2",
            ]
            preview = r.dataplane.spec("web", mark)
            assert [(c.header, c.pool) for c in preview.split.cohorts] == [
                ("X-Zerodown-Preview", "canary")
            ]
            assert r.runtime.starts == [("v1", 2), ("v2", 2)]
            assert len(r.dataplane.drains) == 2
            assert sorted(r.runtime.stops) == sorted(i.id for i in r.runtime.started[:2])

    asyncio.run(run())


def test_canary_moves_weight_step_by_step_on_passing_verdicts() -> None:
    async def run() -> None:
        async with rig(web(strategy='"canary"', canary=CANARY)) as r:
            mark = await serving_v1(r)
            r.dataplane.serve("web", "stable", PoolTraffic(800))
            r.dataplane.serve("web", "canary", PoolTraffic(200))
            deploy_id = await r.orch.deploy("web", "v2")
            view = await r.outcome(deploy_id)
            assert view["outcome"] == "succeeded"
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | canary v2 v2 10%",
                "v1 v1 | canary v2 v2 50%",
                "v1~ v1~ v2 v2",  # promotion: the old set drains
                "v2 v2",
            ]
            verdicts = r.events("analysis")
            assert [(v["deploy_id"], v["verdict"]) for v in verdicts] == [(deploy_id, "pass")] * 2
            # Judged over what passed since the weight moved: looked at after one
            # read (200 canary requests: too few to rule out +1 point), passed after two.
            assert "(0/400) on canary vs 0.00% (0/1600) on stable" in verdicts[0]["reason"]
            assert r.runtime.starts == [("v1", 2), ("v2", 2)]  # the whole new set up front

    asyncio.run(run())


def test_recreate_holds_requests_across_the_gap() -> None:
    async def run() -> None:
        async with rig(web(strategy='"recreate"')) as r:
            mark = await serving_v1(r)
            view = await r.deploy("v2")
            assert view["outcome"] == "succeeded"
            assert r.dataplane.history("web", since=mark) == [
                "v1 v1 | hold",  # held before the drain: no request meets an empty pool
                "v1~ v1~ | hold",
                "- | hold",
                "v2 v2 | hold",
                "v2 v2",
            ]
            # Old stopped before new started.
            assert r.runtime.starts == [("v1", 2), ("v2", 2)]
            first_v2 = r.runtime.started[2].id
            assert len(r.runtime.stops) == 2
            assert first_v2 not in r.runtime.stops

    asyncio.run(run())


def test_strategy_given_to_deploy_overrides_the_config() -> None:
    async def run() -> None:
        config = web(strategy='"rolling"', blue_green='{ scale_down_delay = "0s" }')
        async with rig(config) as r:
            mark = await serving_v1(r)
            view = await r.deploy("v2", strategy="blue_green")
            assert view["outcome"] == "succeeded"
            assert view["strategy"] == "blue_green"
            assert r.dataplane.history("web", since=mark)[0] == "v1 v1 | canary v2 v2 0%"

    asyncio.run(run())


def test_two_services_deploy_side_by_side_each_in_its_own_part_of_the_table() -> None:
    async def run() -> None:
        api = service_toml("api", route='{ host = "*", path = "/api" }', instances="1")
        async with rig(web() + api) as r:
            web_id = await r.orch.deploy("web", "v1")
            api_id = await r.orch.deploy("api", "a1")
            assert (await r.outcome(web_id))["outcome"] == "succeeded"
            assert (await r.outcome(api_id))["outcome"] == "succeeded"
            assert r.dataplane.history("web")[-1] == "v1 v1"
            assert r.dataplane.history("api")[-1] == "a1"
            assert r.runtimes["web"].starts == [("v1", 2)]
            assert r.runtimes["api"].starts == [("a1", 1)]
            assert [as_json(s)["service"] for s in r.orch.status()] == ["web", "api"]

    asyncio.run(run())


# -- the canary judged by statistics ---------------------------------------------------
#
# One canary step of 10 % with no pause, so that its analyze step does all the
# looking; every stats read (the judge's, once per JUDGE_EVERY) adds one
# interval: 100 canary requests beside 900 stable ones, log-normal latencies
# around a 50 ms median (sigma 0.5). The judge looks at the window each time
# its canary requests double (100, 200, 400, ...), so the request counts at a
# verdict are exact, and a bound on them is what a team would wait.

ONE_STEP = '{ steps = [{ weight = 10, pause = "0s" }] }'
STABLE = PoolTraffic(900, errors=9, seconds=0.05, spread=0.5)  # 1 % errors


async def judged_canary(r: Rig, canary: PoolTraffic) -> tuple[Json, list[Json]]:
    """Deploy v2 as a canary beside v1 serving STABLE; its view and analysis events."""
    await serving_v1(r)
    r.dataplane.serve("web", "stable", STABLE)
    r.dataplane.serve("web", "canary", canary)
    view = await r.deploy("v2")
    return view, r.events("analysis")


@pytest.fixture
def quick_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    # The analyze step re-reads the stats every JUDGE_EVERY; a second is real
    # time a test need not spend.
    monkeypatch.setattr(executor, "JUDGE_EVERY", 0.01)


@pytest.mark.usefixtures("quick_judge")
def test_a_healthy_canary_is_passed_once_an_increase_that_matters_is_ruled_out() -> None:
    async def run() -> None:
        config = web(strategy='"canary"', canary=ONE_STEP, deploy_timeout='"5s"')
        async with rig(config) as r:
            view, verdicts = await judged_canary(r, replace(STABLE, requests=100, errors=1))
            assert view["outcome"] == "succeeded"
            *undecided, verdict = verdicts
            assert verdict["verdict"] == "pass"
            assert {v["verdict"] for v in undecided} <= {"inconclusive"}
            # Passed at 800 canary requests. At 400, 1 % against 1 % was still
            # open: +1.23 points not ruled out.
            assert [v["canary"]["requests"] for v in verdicts] == [100, 200, 400, 800]
            assert undecided[-1]["errors"]["high"] == pytest.approx(0.0123, abs=1e-4)
            assert verdict["canary"] == {
                "requests": 800,
                "errors": 8,
                "error_rate": 0.01,
                "p99": verdict["canary"]["p99"],
            }
            errors = verdict["errors"]
            assert (errors["verdict"], errors["increase"]) == ("pass", 0.0)
            assert errors["high"] < errors["matters"] == 0.01
            latency = verdict["latency"]
            assert (latency["verdict"], latency["shift"]) == ("pass", 0.0)
            assert latency["p_value"] == pytest.approx(0.5, abs=1e-3)  # alike: no side favoured
            assert latency["high"] < latency["matters"] == 0.005
            assert "at most" in verdict["reason"]
            # The deploy view shows it on the analyze step that passed.
            (analyzed,) = [
                s for s in view["steps"] if s["kind"] == "analyze" and s["phase"] == "after"
            ]
            assert analyzed["verdict"] == view["verdict"]
            assert analyzed["detail"] == verdict["reason"]
            assert view["verdict"]["canary"]["requests"] == 800

    asyncio.run(run())


@pytest.mark.usefixtures("quick_judge")
def test_a_canary_with_2_points_more_errors_is_rolled_back_within_400_requests() -> None:
    async def run() -> None:
        async with rig(web(strategy='"canary"', canary=ONE_STEP)) as r:
            view, verdicts = await judged_canary(r, replace(STABLE, requests=100, errors=3))
            assert view["outcome"] == "rolled_back"
            # Open at 100 and 200 canary requests, failed at 400.
            assert [(v["canary"]["requests"], v["verdict"]) for v in verdicts] == [
                (100, "inconclusive"),
                (200, "inconclusive"),
                (400, "fail"),
            ]
            verdict = verdicts[-1]
            assert verdict["errors"]["verdict"] == "fail"
            assert verdict["errors"]["low"] > 0
            assert verdict["errors"]["increase"] == pytest.approx(0.02)
            assert view["reason"] == verdict["reason"]
            assert view["reason"].startswith("error rate 3.00% (")
            # The deploy view carries the same numbers, on the step that failed too.
            assert view["verdict"] == {k: v for k, v in verdict.items() if k != "deploy_id"}
            (failed,) = [s for s in view["steps"] if s["phase"] == "failed"]
            assert failed["detail"] == view["reason"]
            assert failed["verdict"] == view["verdict"]
            assert r.releases() == {"v2": "failed", "v1": "current"}

    asyncio.run(run())


@pytest.mark.usefixtures("quick_judge")
def test_a_canary_30_percent_slower_is_rolled_back_within_100_requests() -> None:
    async def run() -> None:
        async with rig(web(strategy='"canary"', canary=ONE_STEP)) as r:
            slower = replace(STABLE, requests=100, errors=1, seconds=0.065)
            view, verdicts = await judged_canary(r, slower)
            assert view["outcome"] == "rolled_back"
            (verdict,) = verdicts
            assert verdict["canary"]["requests"] == 100  # the first look
            latency = verdict["latency"]
            assert latency["verdict"] == "fail"
            assert latency["p_value"] < 0.0125  # the first look's share of 5 %
            assert latency["shift"] >= latency["matters"] == 0.005
            assert view["reason"].startswith("p50 ")

    asyncio.run(run())


@pytest.mark.usefixtures("quick_judge")
def test_a_canary_with_too_little_traffic_is_never_passed() -> None:
    async def run() -> None:
        config = web(strategy='"canary"', canary=ONE_STEP, deploy_timeout='"1s"')
        async with rig(config) as r:
            # 2 clean requests a read, a read every 10 ms at most: at most
            # ~200 canary requests before deploy_timeout, and ruling out one
            # point of errors takes 270 clean ones (Wilson's bound, 95 %).
            view, verdicts = await judged_canary(r, PoolTraffic(2, seconds=0.05, spread=0.5))
            assert view["outcome"] == "rolled_back"
            assert view["reason"].startswith("no verdict before deploy_timeout: ")
            # Looked at (100, 200 requests) or not, never passed.
            assert all(v["verdict"] == "inconclusive" for v in verdicts), verdicts
            assert r.releases() == {"v2": "failed", "v1": "current"}

    asyncio.run(run())
