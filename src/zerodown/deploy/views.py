"""The control plane's views (deploy/contract.py), built from the store's
records and the fleets. Pure: the orchestrator gathers, these shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence

from pydantic import JsonValue

from zerodown.deploy.contract import (
    CrashLoopView,
    DeployView,
    InstanceView,
    PauseView,
    ReleaseView,
    StatusView,
    StepView,
    VerdictView,
)
from zerodown.deploy.fleet import Fleet
from zerodown.deploy.plan import Pause
from zerodown.release import Instance
from zerodown.store.base import DeployRecord, JournalEntry, ReleaseRecord

# When a deploy's running step began (its last journal entry is "before"), or None.
StepBegan = Callable[[int], float | None]


def deploy_view(record: DeployRecord, journal: Sequence[JournalEntry]) -> DeployView:
    steps = [step_view(entry) for entry in journal]
    verdicts = [step.verdict for step in steps if step.verdict is not None]
    return DeployView(
        id=record.id,
        service=record.service,
        version=record.version,
        strategy=record.strategy,
        state=record.state,
        outcome=record.outcome,
        reason=record.reason or None,
        started_at=record.started_at,
        finished_at=record.finished_at,
        steps=steps,
        verdict=verdicts[-1] if verdicts else None,
    )


def step_view(entry: JournalEntry) -> StepView:
    step = json.loads(entry.step_json)
    detail, verdict = read_detail(entry.detail)
    return StepView(
        index=entry.step_index,
        kind=step.get("kind"),
        step=step,
        phase=entry.phase,
        detail=detail,
        at=entry.at,
        verdict=verdict,
    )


# The journal keeps one string of detail per entry (an error's message). A
# step that ended on a canary verdict carries the verdict in it as well, as
# JSON under this prefix, so the deploy view can show the numbers; every
# other detail stays the plain message it always was.
_WITH_VERDICT = '{"message": '


def verdict_detail(message: str, verdict: Mapping[str, JsonValue] | None) -> str:
    """A journal entry's detail: `message`, with the canary verdict if there is one."""
    if verdict is None:
        return message
    return json.dumps({"message": message, "verdict": verdict})


def read_detail(detail: str) -> tuple[str, VerdictView | None]:
    """The message and the verdict of a journal entry's detail (`verdict_detail`)."""
    if not detail.startswith(_WITH_VERDICT):
        return detail, None
    data = json.loads(detail)
    verdict = VerdictView.model_validate(data["verdict"])
    return data["message"] or verdict.reason, verdict


def status_view(
    fleet: Fleet,
    deploying: DeployView | None,
    paused: bool,
    pause: PauseView | None,
    warm: Callable[[str], bool],
    crash_loop: CrashLoopView | None,
) -> StatusView:
    """`paused`: a manual pause step waits for promote; `warm(version)`: that
    release is kept warm after a blue-green switch."""
    return StatusView(
        service=fleet.name,
        current=fleet.current,
        deploying=deploying,
        instances=[instance_view(fleet, i, warm(i.version)) for i in fleet.instances],
        traffic=fleet.traffic(),
        paused=paused,
        pause=pause,
        crash_loop=crash_loop,
    )


def instance_view(fleet: Fleet, instance: Instance, warm: bool) -> InstanceView:
    return InstanceView(
        id=instance.id,
        version=instance.version,
        address=instance.address,
        state=shown_state(fleet, instance, warm),
        routed=instance.id in fleet.routed,
    )


def shown_state(fleet: Fleet, instance: Instance, warm: bool) -> str:
    """The instance's state as `status` shows it. A blue-green release kept
    warm after the switch is ready but out of traffic: "standby", so it does
    not read as a serving instance."""
    if instance.id in fleet.draining:
        return "draining"
    if warm and instance.state == "ready" and instance.id not in fleet.routed:
        return "standby"
    return instance.state


def pause_view(
    *, held: bool, waiting_for_promote: bool, step: object, began: float | None
) -> PauseView | None:
    """Why a running deploy waits, if it does: held by an operator's pause,
    at a manual pause step (until promote), or at a timed one (`began` is
    when that step began)."""
    if held:
        return PauseView(by="operator", left=None)
    if waiting_for_promote:
        return PauseView(by="promote", left=None)
    if isinstance(step, Pause) and step.seconds is not None and began is not None:
        left = max(0.0, began + step.seconds - time.time())
        return PauseView(by="timer", left=round(left, 1))
    return None


def release_view(record: ReleaseRecord) -> ReleaseView:
    return ReleaseView(
        version=record.version,
        status=record.status,
        created_at=record.created_at,
        last_deployed_at=record.last_deployed_at,
    )
