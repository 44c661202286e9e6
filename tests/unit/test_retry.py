"""proxy/retry.py: nginx's proxy_next_upstream rule as a table, and the retry
budget over a fake clock (plain floats: no sleeping, no event loop)."""

from __future__ import annotations

import itertools

import pytest

from zerodown.proxy.retry import WINDOW, Attempt, RetryBudget, is_keepalive_race, may_retry

# (sent, responded, idempotent, replayable) -> may retry
TABLE = {
    # nothing written: any method, any body (the target never saw it)
    (False, False, False, False): True,
    (False, False, False, True): True,
    (False, False, True, False): True,
    (False, False, True, True): True,
    # written, no response byte yet: only a repeatable request we can replay
    (True, False, False, False): False,
    (True, False, False, True): False,
    (True, False, True, False): False,
    (True, False, True, True): True,
}


@pytest.mark.parametrize(("sent", "responded", "idempotent", "replayable"), list(TABLE))
def test_may_retry_table(sent: bool, responded: bool, idempotent: bool, replayable: bool) -> None:
    for reused in (False, True):  # a reused connection changes nothing about safety
        attempt = Attempt(sent=sent, responded=responded, reused=reused)
        got = may_retry(attempt, idempotent=idempotent, replayable=replayable)
        assert got is TABLE[(sent, responded, idempotent, replayable)]


@pytest.mark.parametrize(
    ("sent", "idempotent", "replayable", "reused"),
    list(itertools.product((False, True), repeat=4)),
)
def test_never_retry_once_a_response_byte_reached_the_client(
    sent: bool, idempotent: bool, replayable: bool, reused: bool
) -> None:
    attempt = Attempt(sent=sent, responded=True, reused=reused)
    assert may_retry(attempt, idempotent=idempotent, replayable=replayable) is False


@pytest.mark.parametrize(
    ("sent", "responded", "reused", "race"),
    [
        (False, False, True, True),
        (True, False, True, True),
        (True, True, True, False),  # the app answered: not a dead connection
        (True, False, False, False),  # a fresh connection failing is the target's fault
        (False, False, False, False),
    ],
)
def test_keepalive_race_is_a_reused_connection_failing_before_any_answer(
    sent: bool, responded: bool, reused: bool, race: bool
) -> None:
    assert is_keepalive_race(Attempt(sent=sent, responded=responded, reused=reused)) is race


@pytest.mark.parametrize("sent", [False, True])
def test_a_timeout_on_a_reused_connection_is_never_a_keepalive_race(sent: bool) -> None:
    attempt = Attempt(sent=sent, responded=False, reused=True, closed=False)
    assert not is_keepalive_race(attempt)


def spend(budget: RetryBudget, now: float, n: int) -> int:
    """How many of n retries the budget grants at `now`."""
    return sum(budget.try_spend(now) for _ in range(n))


def test_budget_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, minimum=0)
    for _ in range(100):
        budget.record_request(5.0)
    assert spend(budget, 5.0, 50) == 20
    for _ in range(10):
        budget.record_request(5.5)
    assert spend(budget, 5.5, 50) == 2  # 110 requests: 22 in all


def test_budget_minimum_lets_a_quiet_service_retry() -> None:
    budget = RetryBudget(ratio=0.2, minimum=1)
    # No requests at all: the floor is `minimum` per second of the window.
    assert spend(budget, 100.0, 50) == WINDOW


def test_budget_with_nothing_allowed_refuses_at_once() -> None:
    budget = RetryBudget(ratio=0.0, minimum=0)
    for _ in range(1000):
        budget.record_request(1.0)
    assert spend(budget, 1.0, 5) == 0


def test_budget_refuses_without_counting_the_refusal() -> None:
    budget = RetryBudget(ratio=0.5, minimum=0)
    for _ in range(4):
        budget.record_request(0.0)
    assert spend(budget, 0.0, 10) == 2
    budget.record_request(0.0)
    budget.record_request(0.0)
    assert spend(budget, 0.0, 10) == 1  # 6 requests: 3 retries in all, 2 were spent


def test_budget_forgets_requests_and_retries_older_than_the_window() -> None:
    budget = RetryBudget(ratio=0.2, minimum=0)
    for _ in range(100):
        budget.record_request(10.0)
    assert spend(budget, 10.0, 20) == 20
    assert spend(budget, 19.9, 5) == 0  # still inside the window: spent
    # One second later the requests that earned those retries have left the
    # window, and so have the retries.
    assert spend(budget, 20.0, 5) == 0
    for _ in range(10):
        budget.record_request(20.0)
    assert spend(budget, 20.0, 5) == 2


def test_budget_window_slides_second_by_second() -> None:
    budget = RetryBudget(ratio=0.5, minimum=0)
    for second in range(WINDOW):
        for _ in range(2):
            budget.record_request(float(second))
    # 2 requests in each of the last WINDOW seconds: WINDOW retries allowed.
    assert spend(budget, WINDOW - 0.5, 100) == WINDOW
    # The next second drops second 0's requests; the retries spent in second
    # WINDOW - 1 stay, so 18 requests allow nothing more.
    assert spend(budget, float(WINDOW), 100) == 0
    budget.record_request(float(WINDOW))
    budget.record_request(float(WINDOW))
    assert spend(budget, float(WINDOW), 100) == 0
    # When second WINDOW - 1 leaves the window its retries go with it; only the
    # 2 requests of second WINDOW are left: 1 retry.
    assert spend(budget, 2 * WINDOW - 1.0, 100) == 1


def test_budget_after_a_long_quiet_gap_starts_fresh() -> None:
    budget = RetryBudget(ratio=0.1, minimum=0)
    for _ in range(100):
        budget.record_request(1.0)
    assert spend(budget, 1.0, 100) == 10
    assert spend(budget, 1.0 + 10 * WINDOW, 100) == 0  # no requests left in the window
    for _ in range(30):
        budget.record_request(1.0 + 10 * WINDOW)
    assert spend(budget, 1.0 + 10 * WINDOW, 100) == 3
