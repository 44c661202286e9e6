"""The inbound deploy hook: a CI system or a registry starts a deploy
without holding the admin token.

    POST /v1/hooks/deploy
    Content-Type: application/json
    X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, key ZERODOWN_HOOK_SECRET>

    {"service": "web", "version": "v2", "strategy": "canary", "timestamp": 1764864000}

    -> 202 {"deploy_id": 7, "url": "/v1/deploys/7"}

The signature is GitHub's (`X-Hub-Signature-256`, HMAC-SHA256 of the body,
hex), so any sender that signs webhooks the GitHub way can call this, and
`openssl dgst -sha256 -hmac` makes one in a shell. A signature of the body
alone cannot expire, so the replay window lives in the body: an optional
`timestamp` (Unix seconds) is signed with everything else and must lie
within REPLAY_WINDOW of the daemon's clock, and a signature already accepted
is refused (409) until it is out of the window. A captured request is thus
good for one deploy, within minutes of being made: never later to roll
production back to the version it named. A body without `timestamp` (the
plain `{"service", "version"}` form, for senders that cannot add one) is
accepted once: its signature is remembered for UNSTAMPED_MEMORY, so a
replay is refused for that long, but not after a daemon restart; send a
timestamp for the strict window.

Answers: 202 with the deploy id; 401 with the reason on a missing, malformed
or wrong signature or a timestamp outside the window; 409 on a replay (or a
deploy of that service already running); 403 when the daemon has no secret
(the hook is off); 400 on a body that is signed but not a deploy request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from typing import Final

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from zerodown.config.strategy import StrategyName
from zerodown.control.deploys import VERSION_PATTERN, DeployAccepted
from zerodown.deploy.contract import ControlPlane

__all__ = [
    "HOOK_PATH",
    "HOOK_SECRET_ENV",
    "REPLAY_WINDOW",
    "SIGNATURE_HEADER",
    "HookRequest",
    "ReplayGuard",
    "add_hook_routes",
    "sign",
    "signature_problem",
    "timestamp_problem",
]

HOOK_PATH: Final = "/v1/hooks/deploy"
HOOK_SECRET_ENV: Final = "ZERODOWN_HOOK_SECRET"
SIGNATURE_HEADER: Final = "X-Hub-Signature-256"
# Seconds a signed request stays good either side of the daemon's clock: CI
# runners' clocks drift, and a queued job may send a minute late.
REPLAY_WINDOW: Final = 300.0
# How long the signature of a body without a timestamp is refused again: a
# day outlives any retry of the sender's, and only secret holders add entries.
UNSTAMPED_MEMORY: Final = 24 * 3600.0
# A deploy request is a few hundred bytes; a larger body is not one, and
# hashing megabytes for an unauthenticated caller is work for nothing.
MAX_BODY: Final = 16 * 1024
_PREFIX: Final = "sha256="
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=128, pattern=VERSION_PATTERN)
    strategy: StrategyName | None = None  # None: the service's configured strategy
    # Unix seconds when it was signed: the replay window's anchor (None: the
    # signature alone is remembered, for UNSTAMPED_MEMORY)
    timestamp: float | None = None


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value for `body`: "sha256=<hex>"."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_problem(secret: str, body: bytes, header: str | None) -> str | None:
    """Why `header` does not sign `body` with `secret`, or None when it does."""
    if header is None:
        return f"missing {SIGNATURE_HEADER} header (sha256=<hex HMAC-SHA256 of the body>)"
    given = header.strip()
    digest = given[len(_PREFIX) :].lower()
    if not given.startswith(_PREFIX) or len(digest) != 64 or not set(digest) <= _HEX_DIGITS:
        return f"{SIGNATURE_HEADER} is not sha256=<64 hex digits>"
    # compare_digest: the time taken must not tell how much of a guess was right.
    if not hmac.compare_digest(digest, sign(secret, body)[len(_PREFIX) :]):
        return (
            f"{SIGNATURE_HEADER} does not match the body (HMAC-SHA256 of the exact bytes "
            f"sent, keyed with {HOOK_SECRET_ENV})"
        )
    return None


def timestamp_problem(timestamp: float, now: float, window: float = REPLAY_WINDOW) -> str | None:
    """Why a request signed at `timestamp` is refused at `now`, or None if it is fresh."""
    skew = now - timestamp
    if abs(skew) <= window:
        return None
    when = "old" if skew > 0 else "in the future"
    return (
        f"timestamp {timestamp:.0f} is {abs(skew):.0f} s {when}: the hook accepts "
        f"{window:.0f} s either side of the daemon's clock (sign each request when sending it)"
    )


class ReplayGuard:
    """The signatures accepted within the window, each refused a second time.

    Only a caller holding the secret can add one, so the memory is bounded by
    how many deploys that caller starts in REPLAY_WINDOW.
    """

    def __init__(
        self, window: float = REPLAY_WINDOW, clock: Callable[[], float] = time.time
    ) -> None:
        self.window = window
        self.clock = clock
        self._until: dict[str, float] = {}

    def first_time(self, signature: str, memory: float | None = None) -> bool:
        """True, and remembered for `memory` s, the first time `signature` comes.

        By default twice the window: past it the timestamp check refuses the
        request on its own.
        """
        now = self.clock()
        self._until = {s: t for s, t in self._until.items() if t > now}
        if signature in self._until:
            return False
        self._until[signature] = now + (2 * self.window if memory is None else memory)
        return True

    def forget(self, signature: str) -> None:
        """Accept `signature` again: what it asked for was refused, so it did nothing."""
        self._until.pop(signature, None)


def add_hook_routes(app: FastAPI, control: ControlPlane | None) -> None:
    """POST HOOK_PATH on `app`, keyed with ZERODOWN_HOOK_SECRET as set now (unset: 403)."""
    secret = os.environ.get(HOOK_SECRET_ENV) or None
    guard = ReplayGuard()

    # Not a FastAPI body parameter: the signature is over the exact bytes sent.
    @app.post(HOOK_PATH, status_code=202, response_model=DeployAccepted)
    async def deploy_hook(request: Request, response: Response) -> DeployAccepted:
        if secret is None:
            raise HTTPException(
                403, f"the deploy hook is off: set {HOOK_SECRET_ENV} for the daemon to enable it"
            )
        body = await _body(request)
        _authenticate(secret, body, request.headers.get(SIGNATURE_HEADER))
        hook = _parse(body)
        signature = request.headers[SIGNATURE_HEADER].strip().lower()
        _authenticate_time(hook.timestamp, guard, signature)
        try:
            if control is None:
                raise HTTPException(503, "no control plane")
            deploy_id = await control.deploy(hook.service, hook.version, hook.strategy)
        except BaseException:
            guard.forget(signature)  # it started nothing: the same request may come again
            raise
        url = f"/v1/deploys/{deploy_id}"
        response.headers["Location"] = url
        return DeployAccepted(deploy_id=deploy_id, url=url)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"a deploy hook body is at most {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"a deploy hook body is at most {MAX_BODY} bytes")
    return body


def _authenticate(secret: str, body: bytes, header: str | None) -> None:
    reason = signature_problem(secret, body, header)
    if reason is not None:
        raise HTTPException(401, reason, headers={"WWW-Authenticate": "HMAC-SHA256"})


def _authenticate_time(timestamp: float | None, guard: ReplayGuard, signature: str) -> None:
    memory = UNSTAMPED_MEMORY if timestamp is None else None
    if timestamp is not None:
        reason = timestamp_problem(timestamp, guard.clock(), guard.window)
        if reason is not None:
            raise HTTPException(401, reason, headers={"WWW-Authenticate": "HMAC-SHA256"})
    if not guard.first_time(signature, memory):
        raise HTTPException(409, "this signed request was already accepted (a replay)")


def _parse(body: bytes) -> HookRequest:
    try:
        return HookRequest.model_validate(json.loads(body))
    except ValueError as exc:  # json.JSONDecodeError and ValidationError both are
        raise HTTPException(400, f"invalid deploy hook body: {_said(exc)}") from None


def _said(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return f"not JSON ({exc})"
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
