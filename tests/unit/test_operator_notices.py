"""A canary deploy with an operator's pause, resume and promote, as the
notifications tell it: the orchestrator's events through control/notices.py."""

from __future__ import annotations

import asyncio

from fakes import rig, web
from unit.test_orchestrator_control import MANUAL, at_pause_step, serving_v1
from zerodown.control.notices import Notices
from zerodown.deploy.events import event_view


def test_pause_resume_promote_are_events_and_notifications() -> None:
    async def run() -> None:
        async with rig(web(strategy='"canary"', canary=MANUAL)) as r:
            await serving_v1(r)
            after = r.store.last_event_id()
            deploy_id = await r.orch.deploy("web", "v2")
            await at_pause_step(r, deploy_id)
            r.orch.pause("web")
            r.orch.resume("web")
            r.orch.promote("web")
            assert (await r.outcome(deploy_id))["outcome"] == "succeeded"
            for kind in ("paused", "resumed", "promoted"):
                assert [e["deploy_id"] for e in r.events(kind)] == [deploy_id], kind
            notices = Notices()
            said = [notices.on(event_view(e)) for e in r.store.events(after, "web")]
            told = [(n["event"], n["version"]) for n in said if n is not None]
            assert told == [
                ("started", "v2"),
                ("paused", "v2"),  # the plan's pause, until promote
                ("paused", "v2"),  # the operator's
                ("resumed", "v2"),
                ("promoted", "v2"),
                ("succeeded", "v2"),
            ]

    asyncio.run(run())
