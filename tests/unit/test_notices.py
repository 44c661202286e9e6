"""Which deploy events become notifications, and what they say (control/notices.py)."""

from __future__ import annotations

import itertools
from typing import Any

from zerodown.control.notices import Notices
from zerodown.deploy.contract import EventView

VERDICT: dict[str, Any] = {
    "verdict": "fail",
    "reason": "canary errors 4.1 % vs stable 0.2 %",
    "canary": {"requests": 400, "errors": 16},
    "stable": {"requests": 3600, "errors": 7},
}


IDS = itertools.count(1)


def event(kind: str, deploy_id: int | None = 7, **data: Any) -> EventView:
    return EventView(
        id=next(IDS),
        service="web",
        deploy_id=deploy_id,
        kind=kind,
        data=data,
        at=1000.0,
    )


def test_a_canary_that_is_rolled_back_says_why_with_the_numbers() -> None:
    notices = Notices()
    started = notices.on(event("started", version="v2", strategy="canary"))
    assert started is not None
    assert started["event"] == "started"
    assert started["version"] == "v2"
    assert started["text"] == "zerodown: web v2 (deploy 7) started (canary)"
    assert notices.on(event("step", index=0, step={"kind": "start", "count": 2})) is None
    assert notices.on(event("traffic", split={"v1": 90, "v2": 10})) is None
    assert notices.on(event("analysis", **VERDICT)) is None
    assert notices.on(event("rolling_back", reason="canary breach")) is None
    done = notices.on(event("finished", outcome="rolled_back", reason="canary breach: errors"))
    assert done is not None
    assert done["event"] == done["outcome"] == "rolled_back"
    assert done["reason"] == "canary breach: errors"
    assert done["verdict"] == VERDICT
    assert done["deploy_id"] == 7
    assert done["text"] == "↩️ zerodown: web v2 (deploy 7) rolled back: canary breach: errors"
    assert set(done) == {
        "text",
        "event",
        "service",
        "version",
        "deploy_id",
        "outcome",
        "reason",
        "verdict",
        "event_id",
        "at",
    }


def test_pause_until_promote_and_operator_actions_are_said_a_timed_pause_is_not() -> None:
    notices = Notices()
    notices.on(event("started", version="v2", strategy="canary"))
    assert notices.on(event("step", index=2, step={"kind": "pause", "seconds": 30})) is None
    paused = notices.on(event("step", index=4, step={"kind": "pause", "seconds": None}))
    assert paused is not None
    assert paused["event"] == "paused"
    assert "zerodown promote web" in paused["text"]
    kinds = [notices.on(event(kind)) for kind in ("paused", "resumed", "promoted")]
    assert [k["event"] for k in kinds if k] == ["paused", "resumed", "promoted"]
    succeeded = notices.on(event("finished", outcome="succeeded"))
    assert succeeded is not None
    assert (succeeded["outcome"], succeeded["reason"], succeeded["verdict"]) == (
        "succeeded",
        None,
        None,
    )
    assert succeeded["text"].startswith("✅ zerodown: web v2 (deploy 7) succeeded")


def test_every_outcome_is_said_and_events_outside_a_deploy_are_not() -> None:
    notices = Notices()
    for outcome in ("failed", "aborted"):
        said = notices.on(event("finished", outcome=outcome, reason="why"))
        assert said is not None
        assert said["event"] == outcome
        assert said["version"] is None  # a deploy started before this daemon: unknown
    assert notices.on(event("instances_started", deploy_id=None, version="v1")) is None
    assert notices.on(event("finished", outcome="odd")) is None
