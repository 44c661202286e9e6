"""Deadline: a timeout moved per request without a timer per request (fake clock, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from zerodown.proxy.timers import Deadline


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just what Deadline uses: time() and call_at(), run by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in list(self.timers):
            if not timer.cancelled and timer.when <= self.now:
                self.timers.remove(timer)
                timer.callback()

    @property
    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]


def make() -> tuple[FakeLoop, Deadline, list[float]]:
    loop = FakeLoop()
    return loop, Deadline(cast(asyncio.AbstractEventLoop, loop)), []


def test_fires_at_its_deadline() -> None:
    loop, deadline, fired = make()
    deadline.set(5.0, lambda: fired.append(loop.now))
    loop.advance(4.9)
    assert fired == []
    loop.advance(0.1)
    assert fired == [5.0]
    assert deadline.when == 0.0
    assert loop.pending == []


def test_moving_it_later_arms_no_new_timer_until_the_old_one_fires() -> None:
    loop, deadline, fired = make()
    for step in range(100):  # a busy connection: one set per request
        deadline.set(step * 0.01 + 5.0, lambda: fired.append(loop.now))
    assert len(loop.timers) == 1
    loop.advance(5.0)  # fires early, finds the deadline moved, re-arms once
    assert fired == []
    assert len(loop.pending) == 1
    loop.advance(1.0)
    assert fired == [6.0]


def test_moving_it_earlier_rearms_so_it_is_never_late() -> None:
    loop, deadline, fired = make()
    deadline.set(75.0, lambda: fired.append(loop.now))
    deadline.set(10.0, lambda: fired.append(loop.now))
    assert len(loop.pending) == 1
    loop.advance(10.0)
    assert fired == [10.0]


def test_cleared_deadline_does_nothing_and_drops_its_timer() -> None:
    loop, deadline, fired = make()
    deadline.set(5.0, lambda: fired.append(loop.now))
    deadline.clear()
    loop.advance(10.0)
    assert fired == []
    assert loop.pending == []
    deadline.set(12.0, lambda: fired.append(loop.now))  # a fresh timer after the drop
    loop.advance(2.0)
    assert fired == [12.0]


def test_the_callback_of_the_last_set_wins() -> None:
    loop, deadline, fired = make()
    deadline.set(5.0, lambda: fired.append(-1.0))
    deadline.set(5.0, lambda: fired.append(loop.now))
    loop.advance(5.0)
    assert fired == [5.0]


def test_cancel_stops_the_timer() -> None:
    loop, deadline, fired = make()
    deadline.set(5.0, lambda: fired.append(loop.now))
    deadline.cancel()
    assert loop.pending == []
    loop.advance(10.0)
    assert fired == []


def test_a_timer_a_millisecond_early_fires_instead_of_spinning() -> None:
    loop, deadline, fired = make()
    deadline.set(5.0, lambda: fired.append(loop.now))
    loop.timers[0].when = 4.9995  # uvloop rounds to milliseconds
    loop.advance(4.9995)
    assert fired == [4.9995]
