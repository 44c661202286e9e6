"""Which deploy events people hear about, and what the notification says.

Pure: `Notices.on(event)` takes the daemon's EventViews in order and returns
the JSON document to send, or None for an event nobody needs to hear of
(steps, traffic moves, instance churn). It remembers per deploy what later
events do not repeat: the version (from `started`) and the canary judge's
last verdict (from `analysis`), so a rollback says the numbers that caused it.

The document: a Slack-compatible `text` line (Slack and Mattermost incoming
webhooks show it as the message) and the same facts as fields.

    {"text": "↩️ zerodown: web v2 (deploy 7) rolled back: canary breach: ...",
     "event": "rolled_back", "service": "web", "version": "v2", "deploy_id": 7,
     "outcome": "rolled_back", "reason": "canary breach: ...",
     "verdict": {"verdict": "fail", "canary": {...}, "stable": {...}, ...},
     "event_id": 42, "at": 1764864000.5}
"""

from __future__ import annotations

from typing import Any, Final

from zerodown.deploy.contract import EventView

__all__ = ["OUTCOMES", "Notices"]

OUTCOMES: Final = ("succeeded", "rolled_back", "failed", "aborted")
# Events an operator's action sends (orchestrator), said as they are.
_ACTIONS: Final = {"paused": "paused by an operator", "resumed": "resumed", "promoted": "promoted"}
_MARK: Final = {"succeeded": "✅", "rolled_back": "↩️", "failed": "❌", "aborted": "⛔"}


class Notices:
    """The deploy events that matter, as notification documents."""

    def __init__(self) -> None:
        self._versions: dict[int, str] = {}
        self._verdicts: dict[int, dict[str, Any]] = {}

    def on(self, event: EventView) -> dict[str, Any] | None:
        """The notification for `event`, or None when it is not one to send."""
        data, deploy = event.data, event.deploy_id
        if deploy is None:
            return None
        if event.kind == "started":
            self._versions[deploy] = str(data.get("version", ""))
            strategy = data.get("strategy")
            return self._document(event, "started", f"started ({strategy})")
        if event.kind == "analysis" and isinstance(data, dict):
            self._verdicts[deploy] = dict(data)
            return None
        if event.kind in _ACTIONS:
            return self._document(event, event.kind, _ACTIONS[event.kind])
        if event.kind == "step":
            return self._pause(event)
        if event.kind == "finished":
            return self._finished(event)
        return None

    def _pause(self, event: EventView) -> dict[str, Any] | None:
        step = event.data.get("step")
        if not isinstance(step, dict) or step.get("kind") != "pause":
            return None
        if step.get("seconds") is not None:
            return None  # a timed pause goes on by itself: nothing for a person to do
        said = f"paused until promote (zerodown promote {event.service})"
        return self._document(event, "paused", said)

    def _finished(self, event: EventView) -> dict[str, Any] | None:
        outcome = str(event.data.get("outcome", ""))
        if outcome not in OUTCOMES:
            return None
        assert event.deploy_id is not None
        reason = event.data.get("reason") or None
        verdict = self._verdicts.pop(event.deploy_id, None)
        said = outcome.replace("_", " ") + (f": {reason}" if reason else "")
        document = self._document(event, outcome, said, outcome=outcome, reason=reason)
        document["verdict"] = verdict
        self._versions.pop(event.deploy_id, None)
        return document

    def _document(
        self,
        event: EventView,
        name: str,
        said: str,
        outcome: str | None = None,
        reason: Any = None,
    ) -> dict[str, Any]:
        assert event.deploy_id is not None
        version = self._versions.get(event.deploy_id)
        what = f"{event.service} {version}" if version else event.service
        mark = _MARK.get(name, "")
        text = f"{mark} " if mark else ""
        text += f"zerodown: {what} (deploy {event.deploy_id}) {said}"
        return {
            "text": text,
            "event": name,
            "service": event.service,
            "version": version,
            "deploy_id": event.deploy_id,
            "outcome": outcome,
            "reason": reason,
            "verdict": self._verdicts.get(event.deploy_id),
            "event_id": event.id,
            "at": event.at,
        }
