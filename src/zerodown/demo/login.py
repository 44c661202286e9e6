"""What the three session modes share: the login request read, the answers
with the instance's X-Version, the 405 for a wrong method (demo/sessions.py
says which mode keeps the session where)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_LOGIN_BODY = 4096  # a user name, not an upload
MAX_USER = 64

App = ASGIApp
Header = tuple[bytes, bytes]
__all__ = ["App", "BadLogin", "Message", "Receive", "Replier", "Scope", "Send", "login_user"]


class BadLogin(ValueError):
    """The login request is not usable: the client gets `status` with the reason."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class Replier:
    """Answers of the login flow: JSON (or text) with the instance's X-Version."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._version_header: Header = (b"x-version", version.encode())

    async def json(
        self, send: Send, status: int, value: object, headers: tuple[Header, ...] = ()
    ) -> None:
        body = json.dumps(value).encode() + b"\n"
        await self._send(send, status, body, b"application/json", headers)

    async def text(self, send: Send, status: int, text: str) -> None:
        await self._send(send, status, f"{text}\n".encode(), b"text/plain; charset=utf-8", ())

    async def _send(
        self, send: Send, status: int, body: bytes, kind: bytes, extra: tuple[Header, ...]
    ) -> None:
        headers = [(b"content-type", kind), (b"content-length", b"%d" % len(body)), *extra]
        if status == 401:  # RFC 9110 11.6.1: a 401 names how to authenticate
            headers.append((b"www-authenticate", b'Cookie realm="zerodown demo", form="/login"'))
        headers.append(self._version_header)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def refused(self, send: Send, scope: Scope) -> bool:
        """405 for a method the path does not take; True when it answered."""
        allowed = "GET" if scope["path"] == "/me" else "POST"
        if scope["method"] == allowed or (allowed == "GET" and scope["method"] == "HEAD"):
            return False
        await self._send(
            send,
            405,
            f"{scope['path']} takes {allowed}\n".encode(),
            b"text/plain; charset=utf-8",
            ((b"allow", allowed.encode()),),
        )
        return True


async def login_user(scope: Scope, receive: Receive) -> str:
    """The user name of a login request: form `user=NAME` or JSON {"user": NAME}."""
    body = await read_body(receive, MAX_LOGIN_BODY)
    kind = _header(scope, b"content-type").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            value = json.loads(body or b"null")
        except ValueError:
            raise BadLogin("the body is not JSON") from None
        user = value.get("user") if isinstance(value, dict) else None
    else:
        users = parse_qs(body.decode("utf-8", "replace")).get("user")
        user = users[0] if users else None
    if not isinstance(user, str) or not user.strip():
        raise BadLogin('no user name: send user=NAME (a form) or {"user": "NAME"} (JSON)')
    user = user.strip()
    if len(user) > MAX_USER or not user.isprintable():
        raise BadLogin(f"a user name is 1 to {MAX_USER} printable characters")
    return user


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 past `limit` bytes."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise BadLogin("the client went away", 400)
        body += message.get("body", b"")
        if len(body) > limit:
            raise BadLogin(f"the login body is over {limit} bytes", 413)
        if not message.get("more_body", False):
            return bytes(body)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""
