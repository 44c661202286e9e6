"""What the admin API and the CLI may ask of the control plane, and the
views it answers with.

The orchestrator implements ControlPlane; the admin API depends only on it,
so the HTTP layer stays thin and testable with a stand-in. The views are
pydantic models so that the admin API's OpenAPI schema describes them; their
JSON (`model_dump(mode="json")`) is the stable contract the CLI and CI
scripts read: every key below is always present, null when it has no value,
except the canary `verdict`s, which came later and appear only where there
is one, so that the JSON of every deploy without a canary stays as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from zerodown.config.strategy import StrategyName
from zerodown.release import DeployState, Outcome
from zerodown.store.base import JournalPhase, ReleaseStatus

JsonView = dict[str, Any]
"""A view as a client of the admin API reads it: the JSON of one of the models below."""


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Verdict = Literal["pass", "fail", "inconclusive"]


class PoolNumbers(_View):
    """One pool's window as the canary judge saw it."""

    requests: int
    errors: int
    error_rate: float
    p99: float  # seconds


class ErrorNumbers(_View):
    """Canary error rate minus stable's, and its bounds (rates, 0.01 = one point)."""

    verdict: Verdict
    increase: float
    low: float  # at the look's fail level: above 0 is significant
    high: float  # at the confidence: below `matters` rules out an increase that matters
    matters: float  # min_error_increase


class LatencyNumbers(_View):
    """Canary median latency minus stable's (seconds), its bounds, and the rank test."""

    verdict: Verdict
    canary_p50: float
    stable_p50: float
    shift: float
    low: float
    high: float
    matters: float  # the shift that matters here
    slower: float  # how often a canary request is the slower of a pair (0.5: alike)
    p_value: float  # Mann-Whitney, one-sided: the canary is slower


class VerdictView(_View):
    """A canary verdict with its numbers (analysis/judge.py), as the `analysis`
    event carries it: why a canary was passed or rolled back."""

    verdict: Verdict
    reason: str
    confidence: float
    alpha: float  # the significance a fail needed at this look
    canary: PoolNumbers
    stable: PoolNumbers
    errors: ErrorNumbers | None  # null: too few requests to judge at all
    latency: LatencyNumbers | None  # null: no latency on one side to compare


class StepView(_View):
    """One journal entry of a deploy: a step "before", "after" it ran, or "failed"."""

    index: int
    kind: str | None
    step: dict[str, JsonValue]  # the plan step as JSON: {"kind": ..., its fields}
    phase: JournalPhase
    detail: str | None
    at: float  # unix seconds
    # The canary verdict this step ended on. Unlike the other keys, absent
    # rather than null when there is none: a step's JSON stays what it was.
    verdict: VerdictView | None = Field(default=None, exclude_if=lambda verdict: verdict is None)


class DeployView(_View):
    id: int
    service: str
    version: str
    strategy: StrategyName
    state: DeployState
    outcome: Outcome | None  # null while it runs
    reason: str | None  # null when there is none
    started_at: float  # unix seconds
    finished_at: float | None
    steps: list[StepView]
    # The deploy's last canary verdict; absent, not null, without one (as StepView's).
    verdict: VerdictView | None = Field(default=None, exclude_if=lambda verdict: verdict is None)


class InstanceView(_View):
    id: str
    version: str
    address: str
    # "standby": a blue-green release kept warm, out of traffic, after the switch
    state: str
    routed: bool


class PauseView(_View):
    """Why the running deploy waits: `zerodown pause` (until resume), a manual
    pause step (until promote), or a timed pause step (`left` seconds to go)."""

    by: Literal["operator", "promote", "timer"]
    left: float | None


class CrashLoopView(_View):
    """The current release crashed `crashes` times within the back-off's window:
    its missing instances are retried once a window, at `next_retry`."""

    version: str
    crashes: int
    since: float  # unix seconds
    next_retry: float  # unix seconds
    message: str


class StatusView(_View):
    """One service."""

    service: str
    current: str | None
    deploying: DeployView | None
    instances: list[InstanceView]
    traffic: dict[str, float]  # version -> percent of new requests
    paused: bool  # a manual pause waits for promote
    pause: PauseView | None
    crash_loop: CrashLoopView | None


class ReleaseView(_View):
    version: str
    status: ReleaseStatus  # "new": recorded, never current yet
    created_at: float
    last_deployed_at: float | None


class EventView(_View):
    id: int
    service: str
    deploy_id: int | None
    kind: str
    data: dict[str, JsonValue]
    at: float


class ControlPlane(Protocol):
    async def deploy(self, service: str, version: str, strategy: StrategyName | None = None) -> int:
        """Start a deploy in the background; return its id at once.

        Raises UnknownService, DeployBusy (another deploy of this service runs)."""

    async def wait(self, deploy_id: int, timeout: float | None = None) -> DeployView | None:
        """The DeployView once the deploy has an outcome, or as it is at the timeout."""

    def deploy_view(self, deploy_id: int) -> DeployView | None: ...

    def status(self, service: str | None = None) -> list[StatusView]:
        """StatusView for one service, or for every deployable one. Raises UnknownService."""

    def releases(self, service: str) -> list[ReleaseView]: ...

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

    def events(self, after: int = 0, service: str | None = None) -> AsyncIterator[EventView]:
        """Events after id `after`, then new ones as they happen (for SSE)."""
