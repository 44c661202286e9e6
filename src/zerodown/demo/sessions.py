"""The demo app's login flow: where a logged-in user's session lives decides
whether a deploy logs them out, and `zerodown verify --sessions` proves which.

    POST /login    a user name (form `user=alice` or JSON {"user": "alice"}) → 200, a session
    GET  /me       200 {"user": ...} while logged in, 401 otherwise
    POST /logout   200; the session is gone

Three places for the session (`--sessions`), none of them written here:

    memory   starsessions' InMemoryStore: this instance's memory, gone when it stops,
             unknown to the other instances
    redis    starsessions' RedisStore: shared by every instance, outlives them all
    jwt      no store: a signed token (PyJWT, HS256) in a cookie, checked by any
             instance that has the secret (ZERODOWN_DEMO_SECRET)

A store that fails (Redis down or restarting) is answered 503 with what
failed, never a traceback, and never as 401: a user whose session could not
be read was not logged out, and must not be told so.

Only these three paths come here: `/` and `/health` pay nothing for sessions.
"""

from __future__ import annotations

from typing import Literal, get_args

from zerodown.demo.login import App, Receive, Replier, Scope, Send

SessionsMode = Literal["memory", "redis", "jwt"]
SESSIONS_MODES: tuple[SessionsMode, ...] = get_args(SessionsMode)
SESSION_PATHS = frozenset({"/login", "/me", "/logout"})
# redis-py's default retry backs off for seconds per command; a user waiting
# on a dead Redis should get the 503 at once. One retry still covers a pooled
# connection that a Redis restart closed.
REDIS_TIMEOUT = 1.0
SECRET_ENV = "ZERODOWN_DEMO_SECRET"  # the same in every instance, or tokens do not carry over


class LazySessions:
    """The mode's app, built at the first request to a session path: the libraries
    behind it (starlette's requests, PyJWT, redis-py) cost every demo process a
    fifth of a second to import, and most never see a login."""

    def __init__(self, mode: SessionsMode, version: str, redis_url: str | None = None) -> None:
        if mode == "redis" and redis_url is None:
            raise ValueError("--sessions redis needs --redis-url")
        self._args = (mode, version, redis_url)
        self._app: App | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = build_sessions(*self._args)
        await self._app(scope, receive, send)


def build_sessions(mode: SessionsMode, version: str, redis_url: str | None = None) -> App:
    """The ASGI app that answers SESSION_PATHS for `mode`."""
    reply = Replier(version)
    if mode == "jwt":
        from zerodown.demo.tokens import TokenSessions

        return TokenSessions(reply)
    from zerodown.demo.stored import StoredSessions, memory_store, redis_store

    if mode == "memory":
        return StoredSessions(memory_store(), reply, "memory")
    if redis_url is None:
        raise ValueError("--sessions redis needs --redis-url")
    store, errors = redis_store(redis_url, REDIS_TIMEOUT)
    return StoredSessions(store, reply, "redis", errors)
