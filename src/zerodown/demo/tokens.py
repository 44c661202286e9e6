"""Stateless sessions: the session is a signed token (PyJWT, HS256) in a cookie
(or an `Authorization: Bearer` header). Any instance with the same secret
checks it, so a deploy cannot lose it; the price is that a token cannot be
revoked before it expires (logout only asks the browser to drop it)."""

from __future__ import annotations

import os
import time

import jwt
from starlette.requests import HTTPConnection

from zerodown.demo.login import BadLogin, Receive, Replier, Scope, Send, login_user
from zerodown.demo.sessions import SECRET_ENV

TOKEN_COOKIE = "zd_token"
DEMO_SECRET = "zerodown-demo-secret: set ZERODOWN_DEMO_SECRET outside a demo"
TOKEN_TTL = 3600  # seconds a login lasts
ALGORITHM = "HS256"


class TokenSessions:
    """/login issues a token, /me checks it, /logout clears the cookie."""

    def __init__(self, reply: Replier, secret: str | None = None) -> None:
        self._reply = reply
        self._secret = secret or os.environ.get(SECRET_ENV) or DEMO_SECRET

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self._reply.refused(send, scope):
            return
        path = scope["path"]
        if path == "/login":
            await self._login(scope, receive, send)
        elif path == "/logout":
            clear = f"{TOKEN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
            await self._reply.json(send, 200, {"user": None}, ((b"set-cookie", clear.encode()),))
        else:
            await self._me(scope, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            user = await login_user(scope, receive)
        except BadLogin as exc:
            await self._reply.text(send, exc.status, str(exc))
            return
        now = int(time.time())
        claims = {"sub": user, "iat": now, "exp": now + TOKEN_TTL}
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        cookie = f"{TOKEN_COOKIE}={token}; Path=/; Max-Age={TOKEN_TTL}; HttpOnly; SameSite=Lax"
        body = {"user": user, "version": self._reply.version, "token": token}
        await self._reply.json(send, 200, body, ((b"set-cookie", cookie.encode()),))

    async def _me(self, scope: Scope, send: Send) -> None:
        token = _token(HTTPConnection(scope))
        if token is None:
            await self._reply.text(send, 401, "not logged in: POST /login first")
            return
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM])
        except jwt.ExpiredSignatureError:
            await self._reply.text(send, 401, "the login expired: POST /login again")
            return
        except jwt.InvalidTokenError as exc:
            await self._reply.text(send, 401, f"the token is not valid ({exc}): POST /login")
            return
        user = claims.get("sub")
        await self._reply.json(send, 200, {"user": user, "version": self._reply.version})


def _token(connection: HTTPConnection) -> str | None:
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return connection.cookies.get(TOKEN_COOKIE) or None
