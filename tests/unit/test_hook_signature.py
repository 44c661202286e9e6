"""The deploy hook's pure checks: signature, timestamp window, replay memory."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from zerodown.control.hooks import (
    REPLAY_WINDOW,
    ReplayGuard,
    sign,
    signature_problem,
    timestamp_problem,
)

SECRET = "s3cret"
BODY = b'{"service":"web","version":"v2","timestamp":1000}'


def test_sign_is_githubs_form() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY) == f"sha256={expected}"
    # the value GitHub documents for its example ("Hello, World!" with "It's a Secret to Everybody")
    assert sign("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_a_right_signature_passes_in_any_case_of_hex() -> None:
    assert signature_problem(SECRET, BODY, sign(SECRET, BODY)) is None
    assert signature_problem(SECRET, BODY, "sha256=" + sign(SECRET, BODY)[7:].upper()) is None


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (None, "missing X-Hub-Signature-256"),
        ("", "not sha256=<64 hex digits>"),
        ("sha1=" + "0" * 40, "not sha256=<64 hex digits>"),
        ("sha256=" + "g" * 64, "not sha256=<64 hex digits>"),
        ("sha256=" + "0" * 63, "not sha256=<64 hex digits>"),
        ("sha256=" + "0" * 64, "does not match the body"),
        (sign("other", BODY), "does not match the body"),
        (sign(SECRET, BODY + b" "), "does not match the body"),
    ],
)
def test_a_wrong_signature_says_why(header: str | None, says: str) -> None:
    reason = signature_problem(SECRET, BODY, header)
    assert reason is not None
    assert says in reason


def test_timestamp_window_both_ways() -> None:
    assert timestamp_problem(1000.0, 1000.0 + REPLAY_WINDOW) is None
    assert timestamp_problem(1000.0, 1000.0 - REPLAY_WINDOW) is None
    old = timestamp_problem(1000.0, 1000.0 + REPLAY_WINDOW + 1)
    assert old is not None
    assert "301 s old" in old
    future = timestamp_problem(1000.0, 1000.0 - 400, window=60)
    assert future is not None
    assert "400 s in the future" in future
    assert "60 s either side" in future


def test_replay_guard_refuses_a_second_time_until_past_the_window() -> None:
    now = [1000.0]
    guard = ReplayGuard(window=10, clock=lambda: now[0])
    assert guard.first_time("a")
    assert not guard.first_time("a")
    assert guard.first_time("b")
    now[0] += 19
    assert not guard.first_time("a")
    now[0] += 2  # 21 s: twice the window, which the timestamp check alone now refuses
    assert guard.first_time("a")
    assert len(guard._until) == 1  # "b" was forgotten
    guard.forget("a")
    assert guard.first_time("a")
