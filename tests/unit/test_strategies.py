"""Strategies: pure planners. Each plan is run on a tiny fleet simulator that
counts instances per role and state, and checks the invariants a deploy
that drops nothing must keep, step by step and at the end."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest

from zerodown.config.service import ServiceConfig
from zerodown.config.strategy import StrategyName
from zerodown.deploy.plan import (
    Analyze,
    Drain,
    Hold,
    KeepWarm,
    Pause,
    Plan,
    Role,
    SetTraffic,
    Start,
    Step,
    Stop,
    WaitHealthy,
)
from zerodown.deploy.strategies import (
    PLANNERS,
    Situation,
    first_deploy,
    plan,
    rolling_bounds,
    warm_rollback,
)
from zerodown.errors import ConfigError

STRATEGIES: tuple[StrategyName, ...] = ("rolling", "blue_green", "canary", "recreate")


def config(instances: int = 3, **tables: Any) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {"command": "app --port {port}", "instances": instances, **tables}
    )


def rolling(instances: int, surge: int, unavailable: int) -> ServiceConfig:
    return config(instances, rolling={"max_surge": surge, "max_unavailable": unavailable})


# -- the simulator -------------------------------------------------------------------


class Moment(NamedTuple):
    """The fleet right after a step."""

    step: Step
    running: int
    serving: int
    held: bool


@dataclass
class Fleet:
    """Instances per role and state, as the executor would move them.

    `routed` instances are in the routing table; whether they take traffic
    depends on the mode: all of them in pool mode, by weight in split mode
    (a preview alone is not capacity).
    """

    starting: Counter[Role] = field(default_factory=Counter)
    ready: Counter[Role] = field(default_factory=Counter)  # gated, not routed yet
    routed: Counter[Role] = field(default_factory=Counter)
    drained: Counter[Role] = field(default_factory=Counter)
    stopped: Counter[Role] = field(default_factory=Counter)
    warm: int = 0  # old instances left to KeepWarm
    weight: float | None = None  # None: pool mode
    hold: bool = False
    weights: list[float] = field(default_factory=list)  # every split weight, in order
    served: bool = False  # something has served since the deploy began
    trace: list[Moment] = field(default_factory=list)

    @property
    def running(self) -> int:
        return sum((self.starting + self.ready + self.routed + self.drained).values())

    @property
    def serving(self) -> int:
        if self.weight is None:
            return self.routed["old"] + self.routed["new"]
        old = self.routed["old"] if self.weight < 100 else 0
        return old + (self.routed["new"] if self.weight > 0 else 0)

    def run(self, steps: tuple[Step, ...]) -> Fleet:
        for step in steps:
            self.apply(step)
            self.trace.append(Moment(step, self.running, self.serving, self.hold))
            self.served = self.served or self.serving > 0
            # Zero downtime: once anything served, an empty pool is only allowed while held.
            assert self.serving > 0 or self.hold or not self.served, f"nothing serves at {step}"
        return self

    def apply(self, step: Step) -> None:
        match step:
            case Start(role, count):
                assert role == "new", step
                assert count > 0, step
                self.starting[role] += count
            case WaitHealthy(role):
                assert self.starting[role] > 0, "a gate with nothing to gate"
                self.ready[role] += self.starting.pop(role)
            case SetTraffic(mode, weight):
                # Every Start is gated before the SetTraffic that could route it.
                assert not +self.starting, f"routing while {self.starting} still start"
                self.routed += self.ready
                self.ready.clear()
                self.weight = None if mode == "pool" else weight
                if mode == "split":
                    self.weights.append(weight)
            case Drain(role, count):
                assert 0 < count <= self.routed[role], (step, self.routed)
                self.routed[role] -= count
                self.drained[role] += count
            case Stop(role, count):
                assert 0 < count <= self.drained[role], (step, self.drained)
                self.drained[role] -= count
                self.stopped[role] += count
            case Hold(on):
                assert self.hold != on, "hold toggled twice the same way"
                self.hold = on
            case KeepWarm():
                self.warm, self.routed["old"] = self.routed["old"], 0
            case Pause() | Analyze():
                pass


def simulate(strategy: StrategyName, old: int, cfg: ServiceConfig) -> Fleet:
    situation = Situation(old_instances=old, desired=cfg.instances)
    result = plan(strategy, situation, cfg)
    assert result.strategy == strategy
    fleet = Fleet(routed=Counter[Role]({"old": old})).run(result.steps)
    assert_converged(fleet, old, cfg.instances)
    return fleet


def assert_converged(fleet: Fleet, old: int, desired: int) -> None:
    """Every old instance stopped (or kept warm), exactly `desired` new ones serving."""
    assert fleet.stopped["old"] + fleet.warm == old
    assert fleet.routed["old"] == 0
    assert fleet.routed["new"] == fleet.serving == desired
    assert not +(fleet.starting + fleet.ready + fleet.drained)
    assert not fleet.hold


def kinds(p: Plan) -> list[str]:
    return [step.kind for step in p.steps]


# -- first deploy, names, situation ----------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_first_deploy_starts_gates_and_routes(strategy: StrategyName) -> None:
    p = plan(strategy, Situation(old_instances=0, desired=3), config(3))
    assert p == Plan(strategy, (Start("new", 3), WaitHealthy("new"), SetTraffic("pool")))
    assert p.steps == first_deploy(3)


def test_every_strategy_is_planned_by_name() -> None:
    assert set(PLANNERS) == set(STRATEGIES)


def test_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'ramp'"):
        plan("ramp", Situation(1, 1), config(1))  # type: ignore[arg-type]


@pytest.mark.parametrize(("old", "desired"), [(-1, 1), (1, 0)])
def test_situation_refuses_impossible_counts(old: int, desired: int) -> None:
    with pytest.raises(ValueError, match="no plan for"):
        Situation(old_instances=old, desired=desired)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("old", "desired"), [(1, 1), (2, 3), (3, 3), (5, 2)])
def test_every_strategy_converges(strategy: StrategyName, old: int, desired: int) -> None:
    simulate(strategy, old, config(desired))


# -- rolling ---------------------------------------------------------------------------


def test_rolling_defaults_add_one_then_remove_one() -> None:
    p = plan("rolling", Situation(3, 3), config(3))
    batch = (
        Start("new", 1),
        WaitHealthy("new"),
        SetTraffic("pool"),
        Drain("old", 1),
        Stop("old", 1),
    )
    assert p.steps == batch * 3


def test_rolling_without_surge_takes_one_out_upgrades_and_puts_it_back() -> None:
    p = plan("rolling", Situation(3, 3), rolling(3, surge=0, unavailable=1))
    batch = (
        Drain("old", 1),
        Stop("old", 1),
        Start("new", 1),
        WaitHealthy("new"),
        SetTraffic("pool"),
    )
    assert p.steps == batch * 3


def test_rolling_batch_is_surge_plus_unavailable() -> None:
    p = plan("rolling", Situation(4, 4), rolling(4, surge=2, unavailable=1))
    assert p.steps[:5] == (
        Start("new", 2),
        WaitHealthy("new"),
        SetTraffic("pool"),
        Drain("old", 3),
        Stop("old", 3),
    )
    simulate("rolling", 4, rolling(4, surge=2, unavailable=1))


def test_rolling_scale_down_removes_the_surplus_first() -> None:
    p = plan("rolling", Situation(5, 2), config(2))
    assert p.steps[:2] == (Drain("old", 3), Stop("old", 3))
    fleet = simulate("rolling", 5, config(2))
    assert max(m.running for m in fleet.trace[2:]) <= 3


def test_rolling_scale_up_starts_the_missing_ones_in_the_first_batch() -> None:
    p = plan("rolling", Situation(1, 4), config(4))
    assert p.steps == (
        Start("new", 4),
        WaitHealthy("new"),
        SetTraffic("pool"),
        Drain("old", 1),
        Stop("old", 1),
    )


def test_rolling_gap_with_no_surge_is_held() -> None:
    # One instance, no surge allowed: it must leave before its successor starts.
    p = plan("rolling", Situation(1, 1), rolling(1, surge=0, unavailable=1))
    assert kinds(p) == ["hold", "drain", "stop", "start", "wait_healthy", "set_traffic", "hold"]
    assert (p.steps[0], p.steps[-1]) == (Hold(on=True), Hold(on=False))


GRID = [
    (old, desired, surge, unavailable)
    for old, desired, surge, unavailable in itertools.product(
        range(1, 7), range(1, 6), range(4), range(4)
    )
    if surge or unavailable
]


@pytest.mark.parametrize(("old", "desired", "surge", "unavailable"), GRID)
def test_rolling_keeps_capacity_within_bounds(
    old: int, desired: int, surge: int, unavailable: int
) -> None:
    cfg = rolling(desired, surge, unavailable)
    fleet = simulate("rolling", old, cfg)
    ceiling, floor = rolling_bounds(Situation(old, desired), cfg)
    assert ceiling == desired + surge
    assert floor == max(desired - unavailable, 1 if surge else 0)
    for m in fleet.trace:
        if isinstance(m.step, Start):
            assert m.running <= desired + surge, f"{m.step} runs {m.running}"
        if isinstance(m.step, Drain):
            assert m.serving >= desired - unavailable, f"{m.step} leaves {m.serving} serving"
        assert m.running <= max(old, desired + surge)
        assert m.serving >= min(old, floor) or m.held
    # A hold only where the settings leave no other way: no surge, and every
    # instance may be unavailable while there are at least as many old ones.
    held = any(m.held for m in fleet.trace)
    assert held == (surge == 0 and unavailable >= desired and old >= desired)


def plan_steps(strategy: StrategyName, old: int, cfg: ServiceConfig) -> tuple[Step, ...]:
    return plan(strategy, Situation(old, cfg.instances), cfg).steps


# -- blue-green --------------------------------------------------------------------------


def test_blue_green_previews_then_switches_once_and_keeps_blue_warm() -> None:
    p = plan("blue_green", Situation(2, 3), config(3))
    assert p.steps == (
        Start("new", 3),
        WaitHealthy("new"),
        SetTraffic("split", new_weight=0.0, preview=True),
        SetTraffic("split", new_weight=100.0),
        KeepWarm(600.0),
    )
    fleet = simulate("blue_green", 2, config(3))
    assert fleet.weights == [0.0, 100.0]
    assert fleet.warm == 2


def test_blue_green_without_delay_drains_and_stops_blue() -> None:
    cfg = config(2, blue_green={"scale_down_delay": "0s"})
    p = plan("blue_green", Situation(2, 2), cfg)
    assert p.steps[-3:] == (SetTraffic("split", 100.0), Drain("old", 2), Stop("old", 2))
    assert not any(isinstance(step, KeepWarm) for step in p.steps)
    assert simulate("blue_green", 2, cfg).stopped["old"] == 2


@pytest.mark.parametrize(("old", "desired"), [(1, 1), (3, 2), (2, 5)])
def test_blue_green_never_touches_blue_before_the_switch(old: int, desired: int) -> None:
    steps = plan_steps("blue_green", old, config(desired, blue_green={"scale_down_delay": 0}))
    switch = steps.index(SetTraffic("split", 100.0))
    assert not any(isinstance(s, Drain | Stop) for s in steps[:switch])
    assert sum(isinstance(s, SetTraffic) and s.new_weight == 100 for s in steps) == 1


# -- canary ----------------------------------------------------------------------------------


def test_canary_default_steps() -> None:
    p = plan("canary", Situation(2, 2), config(2))
    assert p.steps == (
        Start("new", 2),
        WaitHealthy("new"),
        SetTraffic("split", 10.0),
        Pause(30.0),
        Analyze(),
        SetTraffic("split", 50.0),
        Pause(30.0),
        Analyze(),
        SetTraffic("split", 100.0),
        Drain("old", 2),
        Stop("old", 2),
    )


def test_canary_weights_follow_config_and_end_at_100() -> None:
    steps = [
        {"weight": 5, "pause": "1m"},
        {"weight": 25, "pause": "manual"},
        {"weight": 60, "pause": "10s"},
    ]
    fleet = simulate("canary", 3, config(3, canary={"steps": steps}))
    assert fleet.weights == [5.0, 25.0, 60.0, 100.0]
    pauses = [m.step.seconds for m in fleet.trace if isinstance(m.step, Pause)]
    assert pauses == [60.0, None, 10.0]
    # Each weight is held for its pause, then judged, before the next one.
    assert (
        kinds(plan("canary", Situation(3, 3), config(3, canary={"steps": steps})))[2:11]
        == [
            "set_traffic",
            "pause",
            "analyze",
        ]
        * 3
    )


def test_canary_last_step_at_100_is_not_repeated() -> None:
    cfg = config(2, canary={"steps": [{"weight": 20, "pause": "5s"}, {"weight": 100, "pause": 5}]})
    fleet = simulate("canary", 2, cfg)
    assert fleet.weights == [20.0, 100.0]


def test_canary_never_leaves_a_pool_empty() -> None:
    fleet = simulate("canary", 1, config(4))
    assert min(m.serving for m in fleet.trace) >= 1


# -- recreate ----------------------------------------------------------------------------


def test_recreate_holds_around_the_gap() -> None:
    p = plan("recreate", Situation(2, 3), config(3))
    assert p.steps == (
        Hold(on=True),
        Drain("old", 2),
        Stop("old", 2),
        Start("new", 3),
        WaitHealthy("new"),
        SetTraffic("pool"),
        Hold(on=False),
    )
    fleet = simulate("recreate", 2, config(3))
    gap = [m.step for m in fleet.trace if m.serving == 0]
    assert all(m.held for m in fleet.trace if m.serving == 0)
    assert gap == [Drain("old", 2), Stop("old", 2), Start("new", 3), WaitHealthy("new")]


@pytest.mark.parametrize(("preview_pause", "pause"), [("manual", None), ("30s", 30.0)])
def test_blue_green_preview_pause_holds_green_on_the_preview_header_before_the_switch(
    preview_pause: str, pause: float | None
) -> None:
    steps = plan(
        "blue_green",
        Situation(old_instances=2, desired=2),
        config(2, blue_green={"preview_pause": preview_pause}),
    ).steps
    preview = steps.index(SetTraffic("split", new_weight=0.0, preview=True))
    assert steps[preview + 1] == Pause(pause)
    assert steps[preview + 2] == SetTraffic("split", new_weight=100.0)


def test_blue_green_without_preview_pause_switches_right_after_the_preview() -> None:
    steps = plan("blue_green", Situation(old_instances=2, desired=2), config(2)).steps
    preview = steps.index(SetTraffic("split", new_weight=0.0, preview=True))
    assert steps[preview + 1] == SetTraffic("split", new_weight=100.0)


@pytest.mark.parametrize(
    ("warm", "starts"),
    [(3, ()), (4, ()), (1, (Start("new", 2), WaitHealthy("new")))],
)
def test_a_warm_rollback_starts_only_what_the_warm_release_lacks(
    warm: int, starts: tuple[Step, ...]
) -> None:
    rollback = warm_rollback(warm, Situation(old_instances=3, desired=3))
    switch = (SetTraffic("split", new_weight=100.0), Drain("old", 3), Stop("old", 3))
    assert rollback.steps == (*starts, *switch)
    assert rollback.strategy == "blue_green"
