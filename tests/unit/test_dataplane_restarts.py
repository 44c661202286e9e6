"""A data plane being started again (DataPlaneDown) is waited for, bounded;
a deploy that meets one goes on (a canary look is skipped, a rollback's apply
waits) instead of failing, and failing its rollback the same way."""

from __future__ import annotations

import asyncio

import pytest

from fakes import PoolTraffic, RecordingDataPlane, rig, web
from zerodown.dataplane import restarts
from zerodown.dataplane.channel import ChannelClosed
from zerodown.dataplane.restarts import through_restarts
from zerodown.deploy import executor
from zerodown.errors import DataPlaneDown, DataPlaneError
from zerodown.routing import RoutingTable
from zerodown.stats import Stats

CANARY = '{ steps = [{ weight = 10, pause = "20ms" }], min_requests = 10 }'


class Flaky:
    """A call that raises `error` for its first `fails` calls, then answers."""

    def __init__(self, fails: int, error: Exception) -> None:
        self.fails, self.error, self.calls = fails, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.error
        return "done"


def test_a_call_is_asked_again_until_the_data_plane_is_back() -> None:
    call = Flaky(3, DataPlaneDown("gone"))
    assert asyncio.run(through_restarts("apply", call, deadline=1.0, every=0.001)) == "done"
    assert call.calls == 4


def test_a_data_plane_not_back_by_the_deadline_is_an_error() -> None:
    call = Flaky(1000, DataPlaneDown("gone"))
    with pytest.raises(DataPlaneDown, match="gone"):
        asyncio.run(through_restarts("apply", call, deadline=0.02, every=0.005))
    assert 2 <= call.calls <= 5


def test_a_refusal_is_not_asked_again() -> None:
    call = Flaky(1, DataPlaneError("rejected"))
    with pytest.raises(DataPlaneError, match="rejected"):
        asyncio.run(through_restarts("apply", call, deadline=1.0, every=0.001))
    assert call.calls == 1


def test_a_closed_channel_is_a_typed_data_plane_down() -> None:
    closed = ChannelClosed("channel closed")
    assert isinstance(closed, DataPlaneDown)
    assert isinstance(closed, ConnectionError)  # what the channel's readers catch


class RestartingDataPlane(RecordingDataPlane):
    """Down for `outage` calls, from the moment `go_down` is called (or after
    the `after_reads`-th stats read): as a proxy its watcher starts again."""

    def __init__(self) -> None:
        super().__init__()
        self.outage = 0
        self.after_reads: int | None = None
        self.refused: list[str] = []

    def _down(self, what: str) -> None:
        if self.outage > 0:
            self.outage -= 1
            self.refused.append(what)
            raise DataPlaneDown(f"{what}: the proxy is being started again")

    async def apply(self, table: RoutingTable) -> None:
        self._down("apply")
        await super().apply(table)

    async def stats(self) -> Stats:
        self._down("stats")
        stats = await super().stats()
        if self.after_reads is not None and self.stats_reads >= self.after_reads:
            self.after_reads, self.outage = None, 2
        return stats


def test_a_canary_look_at_a_dead_proxy_is_skipped_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executor, "JUDGE_EVERY", 0.01)

    async def run() -> None:
        plane = RestartingDataPlane()
        async with rig(web(strategy='"canary"', canary=CANARY), dataplane=plane) as r:
            assert (await r.deploy("v1"))["outcome"] == "succeeded"
            r.dataplane.serve("web", "stable", PoolTraffic(80, errors=0))
            r.dataplane.serve("web", "canary", PoolTraffic(20, errors=0))
            reads = r.dataplane.stats_reads
            plane.after_reads = reads + 1  # down after the canary's baseline: its look meets it
            view = await r.deploy("v2")
            assert view["outcome"] == "succeeded", view
            assert plane.refused == ["stats", "stats"]  # two looks skipped, then judged
            assert r.dataplane.history("web")[-1] == "v2 v2"

    asyncio.run(run())


def test_a_rollback_whose_proxy_is_being_restarted_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(restarts, "RETRY_EVERY", 0.005)

    async def run() -> None:
        plane = RestartingDataPlane()
        async with rig(web(strategy='"canary"', canary=CANARY), dataplane=plane) as r:
            assert (await r.deploy("v1"))["outcome"] == "succeeded"
            r.dataplane.serve("web", "stable", PoolTraffic(80, errors=0))
            r.dataplane.serve("web", "canary", PoolTraffic(20, errors=10))
            # Down after the look that fails the canary: the rollback meets it.
            plane.after_reads = r.dataplane.stats_reads + 2
            view = await r.deploy("v2")
            assert view["outcome"] == "rolled_back", view
            assert "rollback failed" not in view["reason"]
            assert plane.refused == ["apply", "apply"]
            assert r.dataplane.history("web")[-1] == "v1 v1"
            assert r.releases() == {"v2": "failed", "v1": "current"}

    asyncio.run(run())
