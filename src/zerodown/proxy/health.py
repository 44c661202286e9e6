"""Health of one target: active checks, passive outlier ejection, slow start.

Pure: no sockets, no clock. Every method that needs the time takes `now`
(monotonic seconds), so tests drive it with plain numbers and the I/O shell
(`checker.py`, the pool) owns the clock.

States (HealthState) and the events that move between them:

    up --fall--> down --rise--> up
    up --eject--> ejected --back--> up
                  ejected --fall--> down

- `up`: may take traffic. A new target starts here (optimistic, as nginx and
  HAProxy do): it is only in the table because the orchestrator's health gate
  already passed it, and passive retries cover one that died since.
- `down`: `fall` active checks failed in a row; back after `rise` passes.
- `ejected`: passive outlier detection saw `consecutive_errors` bad responses
  in a row and the pool allowed the ejection (`may_eject`). It comes back once
  its ejection time has passed: with active checks, on the first check that
  passes after that time (the time alone proves nothing about a target we can
  probe); without them, on the first `tick(now)` at or after `ejected_until`.
  Active checks that fail `fall` times while it is ejected turn it `down`, so
  it then needs the full `rise` passes.

A busy target is not a dead one. An app with one synchronous worker (the
default gunicorn) answers a check only after the requests queued before it,
so under slow requests its checks time out while it serves every request it
gets. A check that *timed out* is therefore excused -- it moves nothing, in
any state -- while the target's real responses (below 500) keep arriving:
the last one came within `interval + timeout` of the verdict (plus how late
this process hears of them: 0 where it serves them, the counters' poll period
in a multi-worker supervisor). Refused connections, resets and bad statuses
are never excused, and a timeout with no recent answer counts as a failure:
that is a hung app, and no traffic proves otherwise.

Why `serving` is a plain property of the state and expiry is applied by
`tick(now)`: the balancer reads `serving` on every request and has no `now`
there, so it must be one comparison. The price is that something has to call
`tick` once the ejection time passes; with no active checks that is the pool,
which schedules it for `ejected_until` (e.g. `loop.call_at`). With active
checks the checker's results drive the return and `tick` is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

from zerodown.errors import IllegalTransition
from zerodown.routing import HealthSpec, HealthState, PassiveHealthSpec

HealthEvent = Literal["fall", "rise", "eject", "back"]

# The whole state machine. (state, event) -> new state; anything missing is
# illegal and `transition` raises (h11's _state.py does the same with its
# EVENT_TRIGGERED_TRANSITIONS table).
TRANSITIONS: Final[dict[tuple[HealthState, HealthEvent], HealthState]] = {
    ("up", "fall"): "down",
    ("up", "eject"): "ejected",
    ("down", "rise"): "up",
    ("ejected", "back"): "up",
    ("ejected", "fall"): "down",
}

# A returning target starts at this share of its weight, not at zero: at zero
# it would get no request at all until the ramp moved, and a weighted balancer
# with one target left would divide by nothing.
SLOW_START_FLOOR: Final = 0.1


class HealthShare(NamedTuple):
    """The part of a TargetHealth that workers share (plain values: it crosses processes)."""

    state: HealthState
    ejected_until: float | None
    returned_at: float | None
    times_ejected: int


def transition(current: HealthState, event: HealthEvent) -> HealthState:
    """The one choke point for health moves; raises on an illegal one."""
    new = TRANSITIONS.get((current, event))
    if new is None:
        raise IllegalTransition(f"target health cannot take {event!r} while {current}")
    return new


class TargetHealth:
    """What health checking knows of one target.

    Read the attributes; change them only through the methods, which keep the
    counters and the state consistent. Counters count within the current
    state: every transition resets them.
    """

    __slots__ = (
        "active",
        "answer_lag",
        "answered_at",
        "consecutive_errors",
        "consecutive_failures",
        "consecutive_passes",
        "ejected_until",
        "ejections",
        "excused",
        "passive",
        "returned_at",
        "slow_start",
        "state",
        "times_ejected",
    )

    def __init__(
        self,
        active: HealthSpec | None = None,
        passive: PassiveHealthSpec | None = None,
        slow_start: float = 0.0,
    ) -> None:
        self.active = active
        self.passive = passive
        self.slow_start = slow_start
        self.state: HealthState = "up"
        self.consecutive_failures = 0  # active checks failed in a row
        self.consecutive_passes = 0  # active checks passed in a row
        self.consecutive_errors = 0  # passive: connect errors / 5xx in a row
        self.ejections = 0  # ejections ever, for stats
        self.times_ejected = 0  # backoff exponent; decays after a quiet period
        self.ejected_until: float | None = None
        self.returned_at: float | None = None  # when it last came back up (slow start t0)
        # When its last real response below 500 arrived, and how late we hear of one.
        self.answered_at: float | None = None
        self.answer_lag = 0.0
        self.excused = 0  # timed-out checks excused because it was answering, for stats

    def __repr__(self) -> str:
        return (
            f"<TargetHealth {self.state} fails={self.consecutive_failures} "
            f"passes={self.consecutive_passes} errors={self.consecutive_errors} "
            f"ejections={self.ejections} excused={self.excused}>"
        )

    @property
    def serving(self) -> bool:
        """May this target take traffic, as far as health is concerned."""
        return self.state == "up"

    def on_check(self, ok: bool, now: float, *, timed_out: bool = False) -> None:
        """Apply one active check result; `timed_out`: it failed by taking too long.

        A timed-out check while real responses arrive is excused (see the
        module docstring): it neither counts towards `fall` nor breaks a run
        of passes towards `rise`.
        """
        if ok:
            self._check_passed(now)
        elif timed_out and self.answering(now):
            self.excused += 1
        else:
            self._check_failed(now)

    def answering(self, now: float) -> bool:
        """Did a real response arrive recently enough to excuse a timed-out check?"""
        if self.answered_at is None:
            return False
        spec = self.active if self.active is not None else HealthSpec()
        return now - self.answered_at <= spec.interval + spec.timeout + self.answer_lag

    def answered(self, now: float, lag: float = 0.0) -> None:
        """Real responses arrived by `now`, seen by a process that hears of them
        up to `lag` seconds late (a supervisor reading its workers' counters)."""
        self.answered_at = now
        self.answer_lag = lag

    def on_response(self, ok: bool, now: float) -> bool:
        """Apply one real response; True when the target now wants ejection.

        ok=False is a connect error or a 5xx; ok=True also records that the
        target answers (`answering`). The caller decides with
        `may_eject` over the pool and then calls `eject`. The count restarts
        whether or not the pool allowed it (as Envoy does), so a refused
        target asks again after another `consecutive_errors` in a row rather
        than on every later error.
        """
        if ok:
            # Hot path: one store proves the target answers (`answering`). The
            # error count is 0 already in any state but `up` (moves reset it).
            self.answered_at = now
            self.consecutive_errors = 0
            return False
        if self.passive is None or self.state != "up":
            # Late answers to requests sent before it left `up` say nothing new.
            return False
        self.consecutive_errors += 1
        if self.consecutive_errors < self.passive.consecutive_errors:
            return False
        self.consecutive_errors = 0
        return True

    def eject(self, now: float) -> None:
        """Eject for base * 2**(n-1) seconds (n-th ejection), capped at max.

        n decays: a target that has served for a full `max_ejection_time`
        since it last came back starts again from the base time, so one bad
        hour last week does not cost five minutes today.
        """
        # The pool decides; with no passive spec of our own, time it by the defaults.
        spec = self.passive if self.passive is not None else PassiveHealthSpec()
        self._move("eject", now)
        if self.returned_at is not None and now - self.returned_at >= spec.max_ejection_time:
            self.times_ejected = 0
        self.times_ejected += 1
        self.ejections += 1
        duration = spec.base_ejection_time * 2 ** (self.times_ejected - 1)
        self.ejected_until = now + min(duration, spec.max_ejection_time)

    def tick(self, now: float) -> None:
        """Apply the passing of time: return an expired ejection if nothing else will.

        Cheap and idempotent; call it at or after `ejected_until`, or often.
        """
        if self.state == "ejected" and self.active is None and self._ejection_over(now):
            self._move("back", now)

    def weight_factor(self, now: float) -> float:
        """Share of its weight the target takes now: a ramp after it comes back.

        Linear from SLOW_START_FLOOR at `returned_at` to 1.0 `slow_start`
        seconds later (HAProxy's `slowstart`). 1.0 when slow start is off or
        the target never came back: a target new to the table was gated by
        the orchestrator and the strategy already shifts its traffic slowly.
        """
        if self.slow_start <= 0 or self.returned_at is None:
            return 1.0
        elapsed = now - self.returned_at
        if elapsed >= self.slow_start:
            return 1.0
        return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * max(elapsed, 0.0) / self.slow_start

    def counts_as_ejected(self, now: float) -> bool:
        """Ejected and not merely waiting for a `tick` that would return it."""
        if self.state != "ejected":
            return False
        return self.active is not None or not self._ejection_over(now)

    def shared(self) -> HealthShare:
        """What other workers need to agree with this one (see `adopt`)."""
        return HealthShare(self.state, self.ejected_until, self.returned_at, self.times_ejected)

    def adopt(self, share: HealthShare) -> None:
        """Take the verdict of the process that owns health for all workers.

        With several workers one process runs the checks and hears of every
        ejection; the others copy its verdict instead of walking the state
        machine themselves, so all eject and restore a target together. Times
        are monotonic seconds, which are system-wide on Linux, so an
        ejection ends at the same instant in every worker.
        """
        if share.state != self.state:
            self.consecutive_failures = 0
            self.consecutive_passes = 0
            self.consecutive_errors = 0
        self.state = share.state
        self.ejected_until = share.ejected_until
        self.returned_at = share.returned_at
        self.times_ejected = share.times_ejected

    def _check_passed(self, now: float) -> None:
        self.consecutive_failures = 0
        if self.state == "down":
            self.consecutive_passes += 1
            rise = self.active.rise if self.active is not None else 1
            if self.consecutive_passes >= rise:
                self._move("rise", now)
        elif self.state == "ejected" and self._ejection_over(now):
            self._move("back", now)

    def _check_failed(self, now: float) -> None:
        self.consecutive_passes = 0
        if self.state == "down":
            return
        self.consecutive_failures += 1
        fall = self.active.fall if self.active is not None else 1
        if self.consecutive_failures >= fall:
            self._move("fall", now)

    def _ejection_over(self, now: float) -> bool:
        return self.ejected_until is not None and now >= self.ejected_until

    def _move(self, event: HealthEvent, now: float) -> None:
        self.state = transition(self.state, event)
        self.consecutive_failures = 0
        self.consecutive_passes = 0
        self.consecutive_errors = 0
        if self.state == "up":
            self.returned_at = now
            self.ejected_until = None


def may_eject(healths: Sequence[TargetHealth], now: float) -> bool:
    """May the pool eject one more of its (serving) targets?

    The limit is `max_ejection_percent` of the pool's passive spec (one spec
    per service, so every target of a pool carries the same one). Yes when,
    after it, the ejected share stays within that -- or when none is ejected
    yet: like Envoy we always allow the first one, or a small pool (2 targets
    at 10%) could never eject anything. Never when it would leave no serving
    target: ejecting the last one turns a degraded service into none, while
    passive retries still get some requests through. 0% turns ejection off.
    """
    percent = next((h.passive.max_ejection_percent for h in healths if h.passive), 0.0)
    if percent <= 0 or sum(h.serving for h in healths) <= 1:
        return False
    ejected = sum(h.counts_as_ejected(now) for h in healths) + 1
    return ejected == 1 or ejected * 100 <= percent * len(healths)
