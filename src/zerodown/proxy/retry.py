"""When a failed attempt may be tried again (nginx proxy_next_upstream rules)
and the budget that keeps retries from multiplying an outage.

Pure: no I/O, time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

WINDOW: Final = 10  # seconds of history the budget looks at
_SLOTS: Final = WINDOW


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt at a target ended, as far as retrying is concerned."""

    sent: bool  # any byte of the request was written to the target
    responded: bool  # any byte of the response reached the client
    reused: bool  # the attempt ran on a kept-alive connection
    # The target closed or reset the connection (not a timeout, not a bad answer).
    closed: bool = True


def may_retry(attempt: Attempt, *, idempotent: bool, replayable: bool) -> bool:
    """nginx's rule: once a response byte reached the client, never; a request
    whose bytes were sent only if repeating it is harmless and we still hold its body."""
    if attempt.responded:
        return False
    if not attempt.sent:
        return True
    return idempotent and replayable


def is_keepalive_race(attempt: Attempt) -> bool:
    """The app closed an idle connection just as we reused it: not the target's fault.

    Only a close or reset before any answer looks like that race. A read
    timeout means the target took the request and hung: retrying it on the
    same target would send the request twice and make the client wait twice
    read_timeout, outside retry_timeout and the budget.
    """
    return attempt.reused and not attempt.responded and attempt.closed


Step = Literal["race", "next", "stop"]


def after_failure(
    attempt: Attempt,
    *,
    raced: bool,
    idempotent: bool,
    replayable: bool,
    tried: int,
    tries: int,
    time_left: float,
) -> Step:
    """What the retry loop does after a failed attempt.

    "race": once more on the same target over a new connection (the
    keep-alive race, once per target); "next": another target (`tried`
    counts the failed one, `tries` is the service's limit); "stop": the
    client gets the error. The budget is the caller's, spent only when a
    next target exists.
    """
    if not may_retry(attempt, idempotent=idempotent, replayable=replayable):
        return "stop"
    if not raced and is_keepalive_race(attempt):
        return "race"
    return "next" if tried < tries and time_left > 0 else "stop"


class RetryBudget:
    """Retries may be at most `ratio` of requests over the last WINDOW seconds,
    with `minimum` per second always allowed (so a quiet service can still retry)."""

    __slots__ = ("_epoch", "_requests", "_retries", "minimum", "ratio")

    def __init__(self, ratio: float, minimum: int) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self._requests = [0] * _SLOTS
        self._retries = [0] * _SLOTS
        self._epoch = 0  # the whole second the newest slot belongs to

    def record_request(self, now: float) -> None:
        self._requests[self._slot(now)] += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget; False when it is spent."""
        slot = self._slot(now)
        allowed = self.minimum * WINDOW + self.ratio * sum(self._requests)
        if sum(self._retries) >= allowed:
            return False
        self._retries[slot] += 1
        return True

    def _slot(self, now: float) -> int:
        second = int(now)
        if second - self._epoch >= _SLOTS:
            self._requests = [0] * _SLOTS
            self._retries = [0] * _SLOTS
        else:
            for stale in range(self._epoch + 1, second + 1):
                self._requests[stale % _SLOTS] = 0
                self._retries[stale % _SLOTS] = 0
        self._epoch = max(self._epoch, second)
        return second % _SLOTS
