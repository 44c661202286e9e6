"""`verify --sessions`: what became of each virtual user, counted without a
socket (verify/sessions.py), and the cookie jar the users keep (verify/users.py)."""

from __future__ import annotations

import pytest

from zerodown.errors import ConfigError
from zerodown.verify.sessions import Check, UserRun, outcome_of, tally
from zerodown.verify.users import SessionSpec, keep_cookies

OK, LOST, DOWN = 200, 401, 503


def user(name: str, *statuses: int, at: float = 0.0, logged_in: bool = True) -> UserRun:
    """A user whose checks are one per second from `at`."""
    checks = tuple(Check(at + i, status, "v1", "" if status == OK else "why") for i, status in
                   enumerate(statuses))  # fmt: skip
    return UserRun(name, logged_in, checks, "" if logged_in else "503 store down")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "ok"), (401, "lost"), (503, "error"), (0, "error"), (302, "error")],
)
def test_an_answer_is_the_session_its_loss_or_an_error(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_fates() -> None:
    assert user("a", OK, OK, OK).fate == "kept"
    assert user("b", OK, LOST, OK).fate == "lost", "logged out once is logged out"
    assert user("c", OK, DOWN, OK).fate == "kept", "an error that passed lost nothing"
    assert user("d", OK, OK, DOWN).fate == "unverified", "not known at the end: not kept"
    assert user("e").fate == "unverified", "no check at all proves nothing"
    assert user("f", logged_in=False).fate == "not_logged_in"


def test_all_kept_is_ok_and_says_so_in_one_line() -> None:
    counted = tally([user(f"u{i}", OK, OK) for i in range(5)], deploy_start=0.5)
    assert counted.ok
    assert counted.line() == "sessions: 5 kept, 0 lost"
    assert counted.why == ()
    assert (counted.checks, counted.errors) == (10, 0)
    assert counted.to_json()["kept"] == 5


def test_losses_before_the_deploy_point_at_per_instance_memory() -> None:
    runs = [user("a", OK, LOST, OK), user("b", OK, OK, OK), user("c", OK, OK, LOST)]
    counted = tally(runs, deploy_start=1.5)  # a lost at 1.0 (before), c at 2.0 (during)
    assert not counted.ok
    assert counted.line() == "sessions: 1 kept, 2 lost"
    assert (counted.lost_before, counted.lost_during) == (1, 1)
    said = " ".join(counted.why)
    assert "1 sessions were unknown to another instance before anything was deployed" in said
    assert "1 sessions were lost once the deploy started: another instance answered" in said
    for fix in ("shared store", "tokens", "`sticky`", "not past that instance's stop"):
        assert fix in said, said


def test_unverified_and_failed_logins_are_not_kept_and_say_why() -> None:
    runs = [user("a", OK, DOWN), user("b", OK, DOWN), user("c", logged_in=False)]
    counted = tally(runs)
    assert counted.line() == "sessions: 0 kept, 0 lost, 2 unverified, 1 not logged in"
    assert not counted.ok
    said = " ".join(counted.why)
    assert "(last answers: 503 why)" in said, said
    assert "appendonly" in said
    assert "could not log in before the load (503 store down)" in said
    assert counted.to_json() | {"why": []} == {
        "users": 3,
        "kept": 0,
        "lost": 0,
        "unverified": 2,
        "not_logged_in": 1,
        "checks": 4,
        "errors": 2,
        "lost_before_deploy": 0,
        "lost_during_deploy": 0,
        "errors_said": ["503 why"],
        "why": [],
    }


def test_losses_only_during_the_deploy_point_at_stopped_instances() -> None:
    counted = tally([user("a", OK, OK, LOST), user("b", OK, OK, OK)], deploy_start=1.5)
    assert (counted.lost_before, counted.lost_during) == (0, 1)
    assert counted.why[0] == (
        "1 sessions were lost once the deploy started: the instances that held them "
        "stopped, and their sessions went with them"
    )


def test_without_a_deploy_every_loss_is_before() -> None:
    counted = tally([user("a", OK, LOST)])
    assert (counted.lost_before, counted.lost_during) == (1, 0)


def test_the_jar_keeps_what_is_set_and_drops_what_is_deleted() -> None:
    jar: dict[str, str] = {}
    keep_cookies(jar, ("zd_session=abc; path=/; httponly", "zd_route=r1.sig; Max-Age=3600"))
    assert jar == {"zd_session": "abc", "zd_route": "r1.sig"}
    keep_cookies(jar, ("zd_session=''; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT",))
    keep_cookies(jar, ("zd_route=; Max-Age=0", "junk", "=novalue"))
    assert jar == {}
    keep_cookies(jar, ("a=1", "a=2"))
    assert jar == {"a": "2"}


def test_a_session_spec_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"verify\.sessions"):
        SessionSpec(0)
    with pytest.raises(ConfigError, match=r"verify\.sessions"):
        SessionSpec(3, interval=0)
