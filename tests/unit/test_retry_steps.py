"""retry.after_failure: what the retry loop does after a failed attempt."""

from __future__ import annotations

from zerodown.proxy.retry import Attempt, Step, after_failure

SENT_REUSED_CLOSED = Attempt(sent=True, responded=False, reused=True, closed=True)
NOT_SENT = Attempt(sent=False, responded=False, reused=False)


def step(
    attempt: Attempt,
    *,
    raced: bool = False,
    idempotent: bool = True,
    tried: int = 1,
    tries: int = 3,
    time_left: float = 1.0,
) -> Step:
    return after_failure(
        attempt,
        raced=raced,
        idempotent=idempotent,
        replayable=True,
        tried=tried,
        tries=tries,
        time_left=time_left,
    )


def test_keepalive_race_once_then_the_next_target() -> None:
    assert step(SENT_REUSED_CLOSED) == "race"
    assert step(SENT_REUSED_CLOSED, raced=True) == "next"


def test_a_timeout_after_sending_is_no_race() -> None:
    timed_out = Attempt(sent=True, responded=False, reused=True, closed=False)
    assert step(timed_out) == "next"


def test_never_after_a_response_byte_nor_a_sent_post() -> None:
    assert step(Attempt(sent=True, responded=True, reused=True)) == "stop"
    assert step(SENT_REUSED_CLOSED, idempotent=False) == "stop"
    assert step(NOT_SENT, idempotent=False) == "next"  # the target never saw it


def test_tries_and_retry_timeout_bound_the_loop() -> None:
    assert step(NOT_SENT, tried=3, tries=3) == "stop"
    assert step(NOT_SENT, tried=2, tries=3) == "next"
    assert step(NOT_SENT, time_left=0.0) == "stop"
