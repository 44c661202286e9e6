"""Logged-in users through a deploy, counted: the pure half of `verify --sessions`.

Virtual users log in before the load starts, ask `GET /me` all through the
deploy, and once more after it (verify/users.py does the I/O). Each answer
is one `Check`; this module says what became of each user:

    kept        every answer was 200, the last one (after the deploy) included
    lost        some answer was 401: the app no longer knew the session, so a
                real user would have been sent back to the login page
    unverified  never 401, but the last answer was not 200 (503: the session
                store failed, or the request failed): whether the session is
                still there is not known, and it is not counted as kept

A user whose login failed is not in any of those: `not_logged_in` counts it.
Any lost, unverified or not logged in fails the run, with why and what to change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

Outcome = Literal["ok", "lost", "error"]
Fate = Literal["kept", "lost", "unverified", "not_logged_in"]

LOST_STATUSES = frozenset({401})  # the app says: who are you?

# What to change, in the report of a run that lost sessions.
ADVICE = (
    "keep sessions where every instance finds them: a shared store (Redis; docs/sessions.md), "
    "or signed tokens (JWT); `sticky` keeps each client on its instance, "
    "but not past that instance's stop"
)


def outcome_of(status: int) -> Outcome:
    """One answer to GET /me: 200 is the session, 401 its loss, anything else an error."""
    if status == 200:
        return "ok"
    if status in LOST_STATUSES:
        return "lost"
    return "error"


@dataclass(frozen=True, slots=True)
class Check:
    """One GET /me: when (seconds on the run's clock), what came back."""

    at: float
    status: int  # 0: no answer (connect failed, reset, timeout)
    version: str = "-"  # X-Version of the instance that answered
    reason: str = ""  # the body of an error answer, or how the request failed

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.status)


@dataclass(frozen=True, slots=True)
class UserRun:
    """One virtual user: its login, then its checks in the order they were made."""

    name: str
    logged_in: bool
    checks: tuple[Check, ...] = ()
    login_reason: str = ""  # why the login failed

    @property
    def fate(self) -> Fate:
        if not self.logged_in:
            return "not_logged_in"
        if any(c.outcome == "lost" for c in self.checks):
            return "lost"
        if self.checks and self.checks[-1].outcome == "ok":
            return "kept"
        return "unverified"

    @property
    def first_lost(self) -> Check | None:
        return next((c for c in self.checks if c.outcome == "lost"), None)


@dataclass(frozen=True, slots=True)
class SessionsTally:
    """What `verify --sessions N` reports: the line, the counts, and why."""

    users: int
    kept: int
    lost: int
    unverified: int
    not_logged_in: int
    checks: int  # GET /me answers and failures, all users
    errors: int  # checks that were neither 200 nor 401
    lost_before: int  # lost before the deploy started: another instance did not know them
    lost_during: int  # lost once the deploy had started
    errors_said: tuple[str, ...] = ()  # the most frequent error answers ("503 session store ...")
    why: tuple[str, ...] = ()  # one sentence per kind of problem, advice included

    @property
    def ok(self) -> bool:
        return self.kept == self.users

    def line(self) -> str:
        """`sessions: N kept, M lost`, then what else is not kept."""
        more = [f"{self.unverified} unverified"] if self.unverified else []
        more += [f"{self.not_logged_in} not logged in"] if self.not_logged_in else []
        return ", ".join([f"sessions: {self.kept} kept, {self.lost} lost", *more])

    def to_json(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "kept": self.kept,
            "lost": self.lost,
            "unverified": self.unverified,
            "not_logged_in": self.not_logged_in,
            "checks": self.checks,
            "errors": self.errors,
            "lost_before_deploy": self.lost_before,
            "lost_during_deploy": self.lost_during,
            "errors_said": list(self.errors_said),
            "why": list(self.why),
        }


def tally(runs: Sequence[UserRun], deploy_start: float | None = None) -> SessionsTally:
    """Count the users' fates; `deploy_start` (the checks' clock) splits losses
    into "before" (the instances never shared them) and "during" (stopped)."""
    fates = Counter(run.fate for run in runs)
    lost_at = [c.at for run in runs if (c := run.first_lost) is not None]
    start = float("inf") if deploy_start is None else deploy_start
    before = sum(1 for at in lost_at if at < start)
    checks = [c for run in runs for c in run.checks]
    counts = SessionsTally(
        users=len(runs),
        kept=fates["kept"],
        lost=fates["lost"],
        unverified=fates["unverified"],
        not_logged_in=fates["not_logged_in"],
        checks=len(checks),
        errors=sum(1 for c in checks if c.outcome == "error"),
        errors_said=_most_said(c for c in checks if c.outcome == "error"),
        lost_before=before,
        lost_during=len(lost_at) - before,
    )
    return _with_why(counts, runs, deploy_start is not None)


def _with_why(counts: SessionsTally, runs: Sequence[UserRun], deployed: bool) -> SessionsTally:
    why: list[str] = []
    if counts.lost_before:
        why.append(
            f"{counts.lost_before} sessions were unknown to another instance before "
            "anything was deployed: each instance keeps its own sessions (in its memory)"
        )
    if counts.lost_during:
        where = "once the deploy started" if deployed else "during the run"
        cause = (
            "another instance answered, as above, or the one that held them stopped"
            if counts.lost_before
            else "the instances that held them stopped, and their sessions went with them"
        )
        why.append(f"{counts.lost_during} sessions were lost {where}: {cause}")
    if counts.lost:
        why.append(f"to keep them: {ADVICE}")
    if counts.unverified:
        last = _last_errors(runs)
        why.append(
            f"{counts.unverified} sessions could not be checked after the deploy "
            f"(last answers: {last}): if the session store failed, it must come back "
            "with its data (Redis: appendonly or RDB snapshots)"
        )
    if counts.not_logged_in:
        reasons = sorted({r.login_reason for r in runs if not r.logged_in and r.login_reason})
        said = "; ".join(reasons[:3]) or "no reason given"
        why.append(
            f"{counts.not_logged_in} virtual users could not log in before the load "
            f"({said}): does the app answer POST /login?"
        )
    return replace(counts, why=tuple(why))


def _last_errors(runs: Sequence[UserRun]) -> str:
    """The distinct last answers of unverified users, most frequent first, at most 3."""
    last = [run.checks[-1] for run in runs if run.fate == "unverified" and run.checks]
    return "; ".join(_most_said(last)) or "no check was made"


def _most_said(checks: Iterable[Check]) -> tuple[str, ...]:
    """The distinct answers among `checks`, most frequent first, at most 3."""
    return tuple(text for text, _ in Counter(map(_said, checks)).most_common(3))


def _said(check: Check) -> str:
    status = str(check.status) if check.status else "no answer"
    return f"{status} {check.reason}".strip()
