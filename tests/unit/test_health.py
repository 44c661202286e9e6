"""TargetHealth: the pure health state machine, driven with plain timestamps."""

# The tests read `health.state` after calls that change it; mypy keeps the
# narrowing from the previous comparison and calls the next one impossible.
# mypy: disable-error-code="comparison-overlap"

from __future__ import annotations

import pytest

from zerodown.errors import IllegalTransition
from zerodown.proxy.health import (
    SLOW_START_FLOOR,
    TRANSITIONS,
    HealthEvent,
    TargetHealth,
    may_eject,
    transition,
)
from zerodown.routing import HealthSpec, HealthState, PassiveHealthSpec

ACTIVE = HealthSpec(rise=2, fall=3)
PASSIVE = PassiveHealthSpec(consecutive_errors=3, base_ejection_time=10.0, max_ejection_time=100.0)


def checks(health: TargetHealth, results: str, now: float = 0.0) -> None:
    """Feed active results written as a string: '+' pass, '-' fail, 't' timed out."""
    for mark in results:
        health.on_check(mark == "+", now, timed_out=mark == "t")


def errors(health: TargetHealth, n: int, now: float = 0.0) -> list[bool]:
    return [health.on_response(False, now) for _ in range(n)]


def ejected(now: float = 0.0, active: HealthSpec | None = None) -> TargetHealth:
    health = TargetHealth(active=active, passive=PASSIVE)
    health.eject(now)
    return health


# --- the table --------------------------------------------------------------


def test_starts_up_and_serving() -> None:
    health = TargetHealth()
    assert health.state == "up"
    assert health.serving


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS))
def test_every_listed_transition_is_legal(state: HealthState, event: HealthEvent) -> None:
    assert transition(state, event) == TRANSITIONS[state, event]


@pytest.mark.parametrize(
    ("state", "event"),
    [
        ("up", "rise"),
        ("up", "back"),
        ("down", "fall"),
        ("down", "eject"),
        ("down", "back"),
        ("ejected", "eject"),
        ("ejected", "rise"),
    ],
)
def test_unlisted_transitions_raise(state: HealthState, event: HealthEvent) -> None:
    with pytest.raises(IllegalTransition):
        transition(state, event)


def test_ejecting_a_down_target_raises_and_changes_nothing() -> None:
    health = TargetHealth(active=ACTIVE, passive=PASSIVE)
    checks(health, "---")
    with pytest.raises(IllegalTransition):
        health.eject(1.0)
    assert health.state == "down"
    assert health.ejections == 0


def test_ejecting_twice_raises() -> None:
    health = ejected()
    with pytest.raises(IllegalTransition):
        health.eject(1.0)


# --- active: rise and fall ---------------------------------------------------


def test_fall_consecutive_failures_take_it_down() -> None:
    health = TargetHealth(active=ACTIVE)
    checks(health, "--")
    assert health.serving
    checks(health, "-")
    assert health.state == "down"
    assert not health.serving


def test_a_pass_resets_the_failure_count() -> None:
    health = TargetHealth(active=ACTIVE)
    checks(health, "--+--")
    assert health.state == "up"
    assert health.consecutive_failures == 2


def test_rise_consecutive_passes_bring_it_back() -> None:
    health = TargetHealth(active=ACTIVE)
    checks(health, "---+")
    assert health.state == "down"
    checks(health, "+", now=7.0)
    assert health.state == "up"
    assert health.returned_at == 7.0


def test_a_failure_resets_the_pass_count() -> None:
    health = TargetHealth(active=ACTIVE)
    checks(health, "---+-+")
    assert health.state == "down"
    assert health.consecutive_passes == 1


def test_rise_and_fall_of_one() -> None:
    health = TargetHealth(active=HealthSpec(rise=1, fall=1))
    checks(health, "-")
    assert health.state == "down"
    checks(health, "+")
    assert health.state == "up"


# --- a busy target is not a dead one ----------------------------------------------

# interval 1 s + timeout 2 s: an answer within 3 s of a timed-out check excuses it.
BUSY = HealthSpec(interval=1.0, timeout=2.0, rise=2, fall=3)


def answering_at(t: float, active: HealthSpec = BUSY) -> TargetHealth:
    health = TargetHealth(active=active, passive=PASSIVE)
    assert health.on_response(True, t) is False
    return health


def test_timed_out_checks_while_it_answers_are_excused_for_ever() -> None:
    health = answering_at(0.0)
    for second in range(1, 100):
        checks(health, "t", now=second + 2.0)
        health.on_response(True, float(second))  # one answer a second keeps arriving
    assert health.state == "up"
    assert health.consecutive_failures == 0
    assert health.excused == 99


def test_a_timed_out_check_with_no_answer_ever_counts() -> None:
    health = TargetHealth(active=BUSY)
    checks(health, "ttt", now=5.0)
    assert health.state == "down"
    assert health.excused == 0


@pytest.mark.parametrize(("answered", "excused"), [(7.0, True), (7.0 - 1e-9, False)])
def test_the_excuse_lasts_interval_plus_timeout_after_the_last_answer(
    answered: float, excused: bool
) -> None:
    health = answering_at(answered)
    checks(health, "t", now=10.0)
    assert health.consecutive_failures == (0 if excused else 1)


def test_a_refused_or_bad_check_is_never_excused_however_busy() -> None:
    health = answering_at(10.0)
    checks(health, "---", now=10.0)
    assert health.state == "down"


def test_a_5xx_is_no_answer_that_excuses() -> None:
    health = TargetHealth(active=BUSY, passive=PASSIVE)
    health.on_response(False, 10.0)
    checks(health, "ttt", now=10.0)
    assert health.state == "down"


def test_an_excused_timeout_neither_counts_nor_breaks_a_run() -> None:
    health = answering_at(0.0)
    checks(health, "--t-", now=1.0)  # two failures, one excused, then the third
    assert health.state == "down"
    health.on_response(True, 2.0)  # served in panic while down
    checks(health, "+t+", now=2.0)  # rise=2: the excused timeout leaves the run at 1
    assert health.state == "up"


def test_a_late_hearer_gets_a_wider_excuse() -> None:
    # A supervisor hears of its workers' answers up to one poll (here 1 s) late.
    health = TargetHealth(active=BUSY)
    health.answered(10.0, lag=1.0)
    checks(health, "t", now=14.0)
    assert health.consecutive_failures == 0
    checks(health, "t", now=14.1)
    assert health.consecutive_failures == 1


def test_without_an_active_spec_the_default_interval_and_timeout_bound_the_excuse() -> None:
    health = answering_at(0.0, active=HealthSpec())
    health.active = None
    checks(health, "t", now=3.0)
    assert health.state == "up"
    checks(health, "t", now=3.1)
    assert health.state == "down"  # fall 1 without a spec


# --- passive: consecutive errors --------------------------------------------


def test_wants_ejection_on_the_nth_error_in_a_row() -> None:
    health = TargetHealth(passive=PASSIVE)
    assert errors(health, 3) == [False, False, True]
    assert health.state == "up"  # wanting is not being: the pool decides


def test_a_good_response_resets_the_error_count() -> None:
    health = TargetHealth(passive=PASSIVE)
    errors(health, 2)
    assert health.on_response(True, 0.0) is False
    assert errors(health, 2) == [False, False]


def test_refused_ejection_asks_again_after_another_run() -> None:
    health = TargetHealth(passive=PASSIVE)
    assert errors(health, 6) == [False, False, True, False, False, True]


def test_no_passive_spec_never_wants_ejection() -> None:
    health = TargetHealth()
    assert not any(errors(health, 50))


def test_responses_while_not_up_are_ignored() -> None:
    health = ejected()
    assert not any(errors(health, 10))
    assert health.consecutive_errors == 0


# --- ejection time ------------------------------------------------------------


def test_ejection_time_doubles_and_is_capped() -> None:
    health = TargetHealth(passive=PASSIVE)
    now, durations = 0.0, []
    for _ in range(6):
        health.eject(now)
        assert health.ejected_until is not None
        durations.append(health.ejected_until - now)
        now = health.ejected_until
        health.tick(now)
        now += 1.0  # back only briefly: no quiet period, no decay
    assert durations == [10.0, 20.0, 40.0, 80.0, 100.0, 100.0]
    assert health.ejections == 6


def test_ejection_backoff_resets_after_a_quiet_period() -> None:
    health = ejected(now=0.0)
    health.tick(10.0)
    health.eject(10.0 + 99.0)  # back 99 s < max_ejection_time: doubles
    assert health.ejected_until == 109.0 + 20.0
    health.tick(129.0)
    health.eject(129.0 + 100.0)  # back a full max_ejection_time: base again
    assert health.ejected_until == 229.0 + 10.0
    assert health.times_ejected == 1
    assert health.ejections == 3


def test_without_active_checks_it_returns_when_the_time_passes() -> None:
    health = ejected(now=5.0)
    assert not health.serving
    health.tick(14.9)
    assert health.state == "ejected"
    health.tick(15.0)
    assert health.state == "up"
    assert health.returned_at == 15.0
    assert health.ejected_until is None


def test_with_active_checks_time_alone_does_not_return_it() -> None:
    health = ejected(now=0.0, active=ACTIVE)
    health.tick(1000.0)
    assert health.state == "ejected"


def test_with_active_checks_a_pass_before_the_time_does_not_return_it() -> None:
    health = ejected(now=0.0, active=ACTIVE)
    checks(health, "++++", now=9.0)
    assert health.state == "ejected"


def test_with_active_checks_it_returns_on_the_first_pass_after_the_time() -> None:
    health = ejected(now=0.0, active=ACTIVE)
    checks(health, "+", now=12.0)
    assert health.state == "up"
    assert health.returned_at == 12.0


def test_failing_checks_while_ejected_turn_it_down_needing_rise() -> None:
    health = ejected(now=0.0, active=ACTIVE)
    checks(health, "---", now=1.0)
    assert health.state == "down"
    checks(health, "+", now=20.0)
    assert health.state == "down"  # rise=2: one pass is not enough from down
    checks(health, "+", now=21.0)
    assert health.state == "up"


# --- max ejection percent -------------------------------------------------------


def pool(n: int, percent: float, active: HealthSpec | None = None) -> list[TargetHealth]:
    spec = PASSIVE.model_copy(update={"max_ejection_percent": percent})
    return [TargetHealth(active=active, passive=spec) for _ in range(n)]


def eject_while_allowed(healths: list[TargetHealth], now: float = 0.0) -> int:
    count = 0
    for health in healths:
        if not may_eject(healths, now):
            break
        health.eject(now)
        count += 1
    return count


@pytest.mark.parametrize(
    ("n", "percent", "allowed"),
    [
        (10, 50.0, 5),
        (10, 100.0, 9),  # never the last serving one
        (4, 25.0, 1),
        (3, 50.0, 1),
        (2, 10.0, 1),  # the first ejection is always allowed...
        (2, 100.0, 1),
        (1, 100.0, 0),  # ...unless it would leave nothing serving
        (10, 0.0, 0),  # 0% turns ejection off
    ],
)
def test_max_ejection_percent(n: int, percent: float, allowed: int) -> None:
    assert eject_while_allowed(pool(n, percent)) == allowed


def test_down_targets_count_against_the_last_serving_rule() -> None:
    healths = pool(3, 100.0, active=ACTIVE)
    checks(healths[0], "---")
    checks(healths[1], "---")
    assert not may_eject(healths, 0.0)


def test_an_expired_ejection_awaiting_tick_does_not_count() -> None:
    healths = pool(4, 25.0)
    healths[0].eject(0.0)
    assert not may_eject(healths, 5.0)
    assert may_eject(healths, 10.0)  # healths[0] is over, only its tick is late


def test_no_passive_spec_means_no_ejection() -> None:
    assert not may_eject([TargetHealth(), TargetHealth()], 0.0)


# --- slow start -------------------------------------------------------------------


def returned_at(t0: float, slow_start: float) -> TargetHealth:
    health = TargetHealth(active=HealthSpec(rise=1, fall=1), slow_start=slow_start)
    checks(health, "-+", now=t0)
    return health


@pytest.mark.parametrize(
    ("now", "factor"),
    [(100.0, SLOW_START_FLOOR), (105.0, 0.55), (109.0, 0.91), (110.0, 1.0), (500.0, 1.0)],
)
def test_slow_start_ramps_linearly_from_the_floor(now: float, factor: float) -> None:
    assert returned_at(100.0, 10.0).weight_factor(now) == pytest.approx(factor)


def test_slow_start_clock_going_backwards_stays_at_the_floor() -> None:
    assert returned_at(100.0, 10.0).weight_factor(99.0) == SLOW_START_FLOOR


def test_no_slow_start_for_a_target_that_never_left() -> None:
    assert TargetHealth(slow_start=10.0).weight_factor(0.0) == 1.0


def test_no_slow_start_when_off() -> None:
    assert returned_at(100.0, 0.0).weight_factor(100.0) == 1.0


def test_slow_start_after_an_ejection() -> None:
    health = TargetHealth(passive=PASSIVE, slow_start=10.0)
    health.eject(0.0)
    health.tick(10.0)
    assert health.weight_factor(10.0) == SLOW_START_FLOOR
    assert health.weight_factor(15.0) == pytest.approx(0.55)


def test_repr_names_state_and_counters() -> None:
    health = TargetHealth(active=ACTIVE)
    checks(health, "--")
    assert repr(health) == "<TargetHealth up fails=2 passes=0 errors=0 ejections=0 excused=0>"
