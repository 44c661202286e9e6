"""Sessions in a store, through starsessions' SessionMiddleware: the cookie holds
an id, the store (this instance's memory, or Redis) the data."""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starsessions import (
    InMemoryStore,
    SessionMiddleware,
    SessionStore,
    load_session,
    regenerate_session_id,
)

from zerodown.demo.login import (
    BadLogin,
    Message,
    Receive,
    Replier,
    Scope,
    Send,
    login_user,
)
from zerodown.store.redis import redis_reason

SESSION_COOKIE = "zd_session"  # the session id; the data is in the store

StoreErrors = tuple[type[BaseException], ...]


def memory_store() -> SessionStore:
    return InMemoryStore()


def redis_store(url: str, timeout: float) -> tuple[SessionStore, StoreErrors]:
    """starsessions' RedisStore on a redis-py client that fails fast, and the
    errors that mean "the store failed" (answered 503, not 500)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from starsessions.stores.redis import RedisStore

    client = Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return RedisStore(connection=client, prefix="zerodown-demo:"), (RedisError, OSError)


class StoredSessions:
    """/login, /me and /logout with the session in `store`; a store failure is a 503."""

    def __init__(
        self, store: SessionStore, reply: Replier, name: str, errors: StoreErrors = ()
    ) -> None:
        self._reply = reply
        self._name = name
        self._errors = errors
        # Plain HTTP in the demo: a Secure cookie would never come back.
        self._app = SessionMiddleware(
            self._route, store=store, cookie_name=SESSION_COOKIE, cookie_https_only=False
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, tracked)
        except self._errors as exc:
            # The middleware saves the session just before the response starts,
            # so a failed read or write has sent nothing yet: say what failed.
            if started:
                raise
            what = redis_reason(exc)
            await self._reply.text(
                send, 503, f"session store unavailable ({self._name}): {what}; try again"
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self._reply.refused(send, scope):
            return
        connection = HTTPConnection(scope, receive)
        path = scope["path"]
        if path == "/login":
            try:
                user = await login_user(scope, receive)
            except BadLogin as exc:
                await self._reply.text(send, exc.status, str(exc))
                return
            await load_session(connection)
            # A new id at login: an id planted before it (session fixation) is worthless.
            regenerate_session_id(connection)
            connection.session.clear()
            connection.session["user"] = user
            await self._reply.json(send, 200, {"user": user, "version": self._reply.version})
            return
        await load_session(connection)
        known = connection.session.get("user")
        if path == "/logout":
            connection.session.clear()  # the middleware removes it from the store
            await self._reply.json(send, 200, {"user": None})
        elif isinstance(known, str):
            await self._reply.json(send, 200, {"user": known, "version": self._reply.version})
        else:
            await self._reply.text(send, 401, "not logged in: POST /login first")
