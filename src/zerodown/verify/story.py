"""What ran under the load, told for the chart: the deploy's steps as marks on
the report's time axis, and its outcome for the title. Pure: a DeployView (the
admin API's view of one deploy, with its journal) in, values out.

The journal writes each step "before" it runs and "after" (or "failed"); a
mark is put where a step began, where a step failed, where a person promoted
a manual pause, and where the deploy ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

MarkTone = Literal["step", "end", "failed"]


@dataclass(frozen=True, slots=True)
class Mark:
    """An event on the time axis (a deploy step starting, its end), drawn on the chart."""

    at: float
    label: str
    tone: MarkTone = "step"


@dataclass(frozen=True, slots=True)
class During:
    """What ran under the load and how it ended, as the chart's title tells it."""

    what: str  # "web v1 → v4, canary" or "`./smoke.sh`"
    outcome: str  # "succeeded", "rolled back", "exit 0", ...
    ok: bool
    reason: str | None = None  # why it did not succeed (the judge's verdict, ...)
    kind: Literal["deploy", "command"] = "deploy"


def deploy_told(view: Mapping[str, Any], previous: str | None) -> During:
    """The title's facts: `previous` is the version that served before, as the load saw it."""
    versions = f"{previous} → {view.get('version')}" if previous else str(view.get("version"))
    what = f"{view.get('service')} {versions}, {view.get('strategy')}"
    outcome = view.get("outcome")
    said = str(outcome).replace("_", " ") if outcome else "still running"
    return During(what, said, ok=outcome == "succeeded", reason=view.get("reason") or None)


def deploy_marks(view: Mapping[str, Any], origin: float) -> list[Mark]:
    """Marks for a DeployView's journal; `origin` is the wall clock (unix seconds)
    at the load's time 0, so a journal time `at` is at `at - origin` on the axis."""
    marks = []
    for entry in view.get("steps", []):
        mark = _entry_mark(entry)
        if mark is not None and isinstance(entry.get("at"), int | float):
            marks.append(Mark(entry["at"] - origin, *mark))
    finished, outcome = view.get("finished_at"), view.get("outcome")
    if isinstance(finished, int | float) and outcome:
        tone: MarkTone = "end" if outcome == "succeeded" else "failed"
        marks.append(Mark(finished - origin, str(outcome).replace("_", " "), tone))
    return marks


def _entry_mark(entry: Mapping[str, Any]) -> tuple[str, MarkTone] | None:
    step: Mapping[str, Any] = entry.get("step") or {}
    phase = entry.get("phase")
    if phase == "before":
        return step_label(step), "step"
    if phase == "failed":
        return f"{step_label(step)} failed", "failed"
    if phase == "after" and step.get("kind") == "pause" and step.get("seconds") is None:
        return "promote", "step"  # a manual pause ends when a person promotes
    return None


def step_label(step: Mapping[str, Any]) -> str:
    """A few words for a planned step: "start", "gate", "shift 20%", "switch", ..."""
    kind = str(step.get("kind", "?"))
    role = "" if step.get("role", "new") == "new" else " old"
    if kind == "set_traffic":
        return _traffic_label(step)
    if kind == "pause":
        seconds = step.get("seconds")
        return "pause (manual)" if seconds is None else f"pause {seconds:g}s"
    if kind == "hold":
        return "hold" if step.get("on") else "hold off"
    words = {"start": "start", "wait_healthy": "gate", "analyze": "judge", "keep_warm": "keep warm"}
    if kind in ("drain", "stop"):
        return f"{kind} {step.get('role', '')}".strip()
    return words.get(kind, kind) + (role if kind in ("start", "wait_healthy") else "")


def _traffic_label(step: Mapping[str, Any]) -> str:
    weight = float(step.get("new_weight") or 0.0)
    if step.get("mode") == "pool":
        return "shift"
    if weight >= 100:
        return "switch"
    if step.get("preview") and weight == 0:
        return "preview"
    return f"shift {weight:g}%"
