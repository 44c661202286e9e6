"""The steps a strategy plans, as values. Pure data; the executor gives
them meaning.

Steps name releases by role, not by instance: "new" is the release being
deployed, "old" the one serving when the deploy began. The executor keeps
the instance sets and decides which concrete instances a step touches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zerodown.config.strategy import StrategyName

Role = Literal["old", "new"]


# -- steps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start `count` instances of a release (they take no traffic yet)."""

    role: Role
    count: int
    kind: Literal["start"] = "start"


@dataclass(frozen=True, slots=True)
class WaitHealthy:
    """Every started, not yet gated instance of `role` passes its health gate."""

    role: Role
    kind: Literal["wait_healthy"] = "wait_healthy"


@dataclass(frozen=True, slots=True)
class SetTraffic:
    """Route traffic. `new_weight` is the new release's share in percent.

    `mode="pool"`: one stable pool holding every ready instance of both roles
    (rolling; new_weight is ignored). `mode="split"`: old instances in the
    stable pool, new ones in the canary pool, `new_weight` percent to canary
    (canary, blue-green; 100 means all traffic to new).
    """

    mode: Literal["pool", "split"]
    new_weight: float = 0.0
    preview: bool = False  # the preview header reaches new before any weight does
    kind: Literal["set_traffic"] = "set_traffic"


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait `seconds`, or until `zerodown promote` when seconds is None."""

    seconds: float | None
    kind: Literal["pause"] = "pause"


@dataclass(frozen=True, slots=True)
class Analyze:
    """Judge canary against stable over what the data plane saw since the last step."""

    kind: Literal["analyze"] = "analyze"


@dataclass(frozen=True, slots=True)
class Drain:
    """Take `count` ready instances of `role` out of traffic and wait for them."""

    role: Role
    count: int
    kind: Literal["drain"] = "drain"


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop `count` drained (or never routed) instances of `role`."""

    role: Role
    count: int
    kind: Literal["stop"] = "stop"


@dataclass(frozen=True, slots=True)
class Hold:
    """Recreate: the proxy holds new requests (or shows maintenance) while nothing serves."""

    on: bool
    kind: Literal["hold"] = "hold"


@dataclass(frozen=True, slots=True)
class KeepWarm:
    """Blue-green: the old release stays running, out of traffic, for `seconds`
    after the deploy succeeds, so a rollback in that window is instant."""

    seconds: float
    kind: Literal["keep_warm"] = "keep_warm"


Step = Start | WaitHealthy | SetTraffic | Pause | Analyze | Drain | Stop | Hold | KeepWarm


@dataclass(frozen=True, slots=True)
class Plan:
    strategy: StrategyName
    steps: tuple[Step, ...] = field(default_factory=tuple)
