"""Strategies: pure planners that turn what serves now and the service's
settings into a `Plan`. No I/O, no clock; the executor gives the steps meaning.

Picked by the name the config uses (`PLANNERS`). Every planner answers the
first deploy (nothing serving) the same way: start the whole new set, gate
it, route it. There is nothing to protect, so there is nothing to stage.

Counts in this module:
- *running*: started and not yet stopped (starting, ready, draining);
- *in traffic*: routed and not draining, i.e. serving capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zerodown.config.service import ServiceConfig
from zerodown.config.strategy import StrategyName
from zerodown.deploy.plan import (
    Analyze,
    Drain,
    Hold,
    KeepWarm,
    Pause,
    Plan,
    SetTraffic,
    Start,
    Step,
    Stop,
    WaitHealthy,
)
from zerodown.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Situation:
    """What a deploy starts from."""

    old_instances: int  # instances of the serving release now (0 = first deploy)
    desired: int  # ServiceConfig.instances: how many new ones serve at the end

    def __post_init__(self) -> None:
        if self.old_instances < 0 or self.desired < 1:
            raise ValueError(f"no plan for {self.old_instances} old and {self.desired} desired")


Planner = Callable[[Situation, ServiceConfig], Plan]
Steps = tuple[Step, ...]


def plan(strategy: StrategyName, situation: Situation, config: ServiceConfig) -> Plan:
    """The plan of `strategy` for this situation (the name comes from config or `--strategy`)."""
    planner = PLANNERS.get(strategy)
    if planner is None:
        known = ", ".join(PLANNERS)
        raise ConfigError(f"unknown strategy {strategy!r}; known: {known}", key="strategy")
    return planner(situation, config)


def first_deploy(desired: int) -> Steps:
    """Nothing serves yet: start the whole set, gate it, route it."""
    return (Start("new", desired), WaitHealthy("new"), SetTraffic("pool"))


# -- rolling -----------------------------------------------------------------------


@dataclass(slots=True)
class _Rollout:
    """The counts a rolling plan keeps as it writes steps.

    Every instance counted here is in traffic: a batch's new instances are
    gated and routed before any old one leaves, and a leaving one is drained
    and stopped in the same breath.
    """

    old: int
    desired: int
    ceiling: int  # most instances running at once
    floor: int  # fewest instances in traffic at once
    new: int = 0
    held: bool = False
    steps: list[Step] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.old == 0 and self.new == self.desired

    def room(self) -> int:
        """New instances that may start now without passing the ceiling."""
        return max(0, self.ceiling - self.old - self.new)

    def spare(self) -> int:
        """Old instances that may leave now without going under the floor."""
        return max(0, min(self.old, self.old + self.new - self.floor))

    def add(self, count: int) -> None:
        if count <= 0:
            return
        self.steps += [Start("new", count), WaitHealthy("new"), SetTraffic("pool")]
        self.new += count
        if self.held:  # the gap is over: release what the proxy held
            self.steps.append(Hold(on=False))
            self.held = False

    def remove(self, count: int) -> None:
        if count <= 0:
            return
        if count == self.old + self.new:
            # Nothing would serve until the next batch is healthy (max_surge = 0
            # and max_unavailable >= instances): hold requests as recreate does
            # instead of answering them 503.
            self.steps.append(Hold(on=True))
            self.held = True
        self.steps += [Drain("old", count), Stop("old", count)]
        self.old -= count


def rolling_bounds(situation: Situation, config: ServiceConfig) -> tuple[int, int]:
    """(ceiling, floor): most instances running, fewest in traffic during a rolling deploy.

    Both are relative to `desired`, as Kubernetes' maxSurge/maxUnavailable
    are. With room to surge the floor is at least 1, since a start-first batch
    never needs to empty the pool; with max_surge = 0 and max_unavailable >=
    instances it may be 0, and that gap is held (see `_Rollout.remove`).
    """
    surge, unavailable = config.rolling.max_surge, config.rolling.max_unavailable
    floor = max(situation.desired - unavailable, 1 if surge else 0)
    return situation.desired + surge, floor


def _rolling(situation: Situation, config: ServiceConfig) -> Steps:
    """Replace old instances in batches of up to max_surge + max_unavailable.

    Each round starts as many new instances as the ceiling allows (gated,
    then routed), then drains and stops as many old ones as the floor allows.
    Starting first keeps capacity when a new instance fails its gate; only
    when there is no room to start (max_surge = 0, or more old instances
    than the ceiling) do old ones leave first: that is "take one out,
    upgrade, put it back", and a scale-down during the deploy.

    Scaling during a deploy falls out of the same two bounds: with more old
    instances than the ceiling, the surplus leaves first, with up to
    max_unavailable more (down to the floor); with fewer than desired, the
    first batch starts the missing ones too (up to `desired + max_surge`
    running) before any old one leaves.
    """
    ceiling, floor = rolling_bounds(situation, config)
    rollout = _Rollout(situation.old_instances, situation.desired, ceiling, floor)
    while not rollout.done:
        if rollout.new < rollout.desired and not rollout.room():
            rollout.remove(rollout.spare())
        rollout.add(min(rollout.desired - rollout.new, rollout.room()))
        rollout.remove(rollout.spare())
    return tuple(rollout.steps)


# -- blue-green, canary, recreate ----------------------------------------------------


def _blue_green(situation: Situation, config: ServiceConfig) -> Steps:
    """Full green set, preview, one atomic switch, blue kept warm for instant rollback."""
    old, delay = situation.old_instances, config.blue_green.scale_down_delay
    steps: list[Step] = [
        Start("new", situation.desired),
        WaitHealthy("new"),
        # Only requests with the preview header reach green: smoke tests before any weight.
        SetTraffic("split", new_weight=0.0, preview=True),
    ]
    preview = config.blue_green.preview_pause
    if preview == "manual" or preview > 0:
        steps.append(Pause(None if preview == "manual" else preview))
    steps.append(SetTraffic("split", new_weight=100.0))  # the switch: one table, at once
    if delay > 0:
        steps.append(KeepWarm(delay))  # the executor drains blue now and stops it after delay
    else:
        steps += [Drain("old", old), Stop("old", old)]
    return tuple(steps)


def _canary(situation: Situation, config: ServiceConfig) -> Steps:
    """Shift traffic step by step, judging canary against stable after each pause.

    The whole new set starts up front, not a share sized to the first
    weight: capacity for 100 % is there before any weight moves, a step
    never waits on a start or a gate of its own, and the old set keeps full
    capacity until the end. The cost is a second full set for the length of
    the canary, as with blue-green. The judge compares pool totals, so the
    number of canary instances does not skew it.
    """
    old = situation.old_instances
    steps: list[Step] = [Start("new", situation.desired), WaitHealthy("new")]
    weight = 0.0
    for step in config.canary.steps:
        weight = step.weight
        pause = None if step.pause == "manual" else step.pause
        steps += [SetTraffic("split", new_weight=weight), Pause(pause), Analyze()]
    if weight < 100:
        steps.append(SetTraffic("split", new_weight=100.0))  # promotion
    steps += [Drain("old", old), Stop("old", old)]
    return tuple(steps)


def _recreate(situation: Situation, config: ServiceConfig) -> Steps:
    """Old stops before new starts; the proxy holds requests across the gap."""
    old = situation.old_instances
    return (
        Hold(on=True),  # before the drain, so no request lands in an empty pool
        Drain("old", old),
        Stop("old", old),
        Start("new", situation.desired),
        WaitHealthy("new"),
        SetTraffic("pool"),
        Hold(on=False),
    )


def warm_rollback(warm: int, situation: Situation) -> Plan:
    """Back to a release still kept warm (`warm` of its instances ready): start
    only what it lacks (one crashed meanwhile), then switch at once, as a
    blue-green switch does. Never more than `desired` new ones serve."""
    lacking = situation.desired - warm
    steps: list[Step] = [Start("new", lacking), WaitHealthy("new")] if lacking > 0 else []
    old = situation.old_instances
    steps += [SetTraffic("split", new_weight=100.0), Drain("old", old), Stop("old", old)]
    return Plan("blue_green", tuple(steps))


def _planner(name: StrategyName, replace: Callable[[Situation, ServiceConfig], Steps]) -> Planner:
    def planner(situation: Situation, config: ServiceConfig) -> Plan:
        if situation.old_instances == 0:
            return Plan(name, first_deploy(situation.desired))
        return Plan(name, replace(situation, config))

    planner.__name__ = planner.__qualname__ = f"plan_{name}"
    planner.__doc__ = replace.__doc__
    return planner


PLANNERS: dict[StrategyName, Planner] = {
    "rolling": _planner("rolling", _rolling),
    "blue_green": _planner("blue_green", _blue_green),
    "canary": _planner("canary", _canary),
    "recreate": _planner("recreate", _recreate),
}
