"""Backoff: restart delays and crash-loop detection, driven with plain timestamps."""

from __future__ import annotations

from typing import Any

import pytest

from zerodown.runtime.backoff import Backoff


def test_delay_doubles_per_crash_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, factor=2, max=3, crash_loop_count=100)
    assert [backoff.next_delay(float(t)) for t in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_crashes_older_than_the_window_no_longer_count() -> None:
    backoff = Backoff(base=1, factor=2, max=30, crash_loop_window=60)
    assert backoff.next_delay(0) == 1
    assert backoff.next_delay(10) == 2
    assert backoff.next_delay(65) == 2  # the crash at 0 left the window
    assert backoff.next_delay(200) == 1  # a quiet window: back to base


def test_crash_loop_after_count_crashes_within_the_window() -> None:
    backoff = Backoff(crash_loop_count=3, crash_loop_window=60)
    for t in (0, 10):
        backoff.next_delay(t)
    assert not backoff.crash_loop(10)
    backoff.next_delay(20)
    assert backoff.crash_loop(20)
    assert not backoff.crash_loop(61)  # the crash at 0 aged out


def test_spread_out_crashes_are_never_a_loop() -> None:
    backoff = Backoff(crash_loop_count=2, crash_loop_window=60)
    for t in range(0, 600, 61):
        backoff.next_delay(t)
        assert not backoff.crash_loop(t)


def test_reset_forgets_every_crash() -> None:
    backoff = Backoff(base=1, crash_loop_count=2)
    backoff.next_delay(0)
    backoff.next_delay(1)
    backoff.reset()
    assert not backoff.crash_loop(1)
    assert backoff.next_delay(2) == 1


def test_a_huge_factor_does_not_overflow() -> None:
    backoff = Backoff(base=1, factor=1e300, max=30, crash_loop_count=100)
    assert [backoff.next_delay(0) for _ in range(3)] == [1, 30, 30]


@pytest.mark.parametrize(
    "settings",
    [
        {"base": -1},
        {"base": 5, "max": 1},
        {"factor": 0.5},
        {"crash_loop_count": 0},
        {"crash_loop_window": 0},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="need"):
        Backoff(**settings)
