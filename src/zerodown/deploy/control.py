"""What the admin API and the CLI may ask of the control plane.

The orchestrator implements this; the admin API depends only on it, so the
HTTP layer stays thin and testable with a stand-in.

Views are JSON-ready dicts with these keys (stable: the CLI and CI scripts read them):
- DeployView: id, service, version, strategy, state, outcome (null while running),
  reason (null when there is none), started_at, finished_at (unix seconds),
  steps: [{index, kind, step, phase, detail, at}]
- StatusView (one service): service, current (version or null), deploying
  (DeployView or null), instances: [{id, version, address, state, routed}] (state
  "standby": a blue-green release kept warm, out of traffic, after the switch), traffic:
  {version: percent}, paused (bool: a manual pause waits for promote), pause (null, or why
  the running deploy waits: {by: "operator" (`zerodown pause`, until resume) | "promote"
  (a manual pause step) | "timer" (a timed pause step), left: seconds to go for "timer",
  else null})
- ReleaseView: version, status ("new" | "current" | "previous" | "failed" | "retired";
  "new": recorded, never current yet),
  created_at, last_deployed_at
- EventView: id, service, deploy_id, kind, data (dict), at
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from zerodown.config.strategy import StrategyName

View = dict[str, Any]


class ControlPlane(Protocol):
    async def deploy(self, service: str, version: str, strategy: StrategyName | None = None) -> int:
        """Start a deploy in the background; return its id at once.

        Raises UnknownService, DeployBusy (another deploy of this service runs)."""

    async def wait(self, deploy_id: int, timeout: float | None = None) -> View | None:
        """The DeployView once the deploy has an outcome, or as it is at the timeout."""

    def deploy_view(self, deploy_id: int) -> View | None: ...

    def status(self, service: str | None = None) -> list[View]:
        """StatusView for one service, or for every deployable one. Raises UnknownService."""

    def releases(self, service: str) -> list[View]: ...

    async def rollback(self, service: str, to: str | None = None) -> int:
        """Deploy `to` (default: the previous release) as a rollback; return its deploy id.

        Instant when that release is still warm. Raises NotDeployable, DeployBusy."""

    def promote(self, service: str) -> None:
        """End a manual canary pause (or skip the current timed pause). Raises NotDeployable."""

    def abort(self, service: str) -> None:
        """Stop the running deploy and roll back. Raises NotDeployable."""

    def pause(self, service: str) -> None:
        """Hold the running deploy at its next step until resume."""

    def resume(self, service: str) -> None: ...

    def events(self, after: int = 0, service: str | None = None) -> AsyncIterator[View]:
        """Events after id `after`, then new ones as they happen (for SSE)."""
