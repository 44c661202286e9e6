"""The drivers' record of refused requests: one per request (or per identical
requests read at once), up to a budget a second, the rest summed per rule. Pure."""

from __future__ import annotations

import asyncio
import logging

import pytest

from harness import run
from zerodown.dataplane.accesslog import RefusalLog

RULE = "rate_limit (2 at once, 0.2/s per address)"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_past_the_budget_refusals_are_summed_per_rule_and_said_when_the_second_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), budget=2, clock=clock)
    refusals("web", "rate_limited", RULE, "10.0.0.1", 1)
    refusals("web", "rate_limited", RULE, "10.0.0.2", 3)
    for client in ("10.0.0.3", "10.0.0.4"):
        refusals("web", "rate_limited", RULE, client, 2)
    refusals("web", "blocked", "block.paths ^/\\.git", "10.0.0.5", 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"web: rate_limited a request from 10.0.0.1: {RULE}",
        f"web: rate_limited a request from 10.0.0.2: {RULE} (3 requests)",
    ]
    clock.now += 1.0  # the next second: what was held is said first, then one by one again
    refusals("web", "denied", "deny 10.9.0.0/16", "", 1)
    assert [r.getMessage() for r in caplog.records[2:]] == [
        "web: rate_limited 4 more requests: "
        f"{RULE} (over 2 refusal records a second: not one by one)",
        "web: blocked 1 more requests: block.paths ^/\\.git "
        "(over 2 refusal records a second: not one by one)",
        "web: denied a request from -: deny 10.9.0.0/16",
    ]
    refusals.flush()  # nothing held: nothing said
    assert len(caplog.records) == 5


def test_what_was_held_is_said_when_the_second_ends_even_if_no_refusal_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        refusals = RefusalLog(logging.getLogger("test.refusals"), budget=1, every=0.05)
        for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            refusals("web", "rate_limited", RULE, client, 1)
        assert len(caplog.records) == 1
        await asyncio.sleep(0.1)  # the window's end, on the event loop's timer
        assert (
            caplog.records[-1].getMessage().startswith(f"web: rate_limited 2 more requests: {RULE}")
        )

    run(main())
