"""The demo app: a plain ASGI callable that says which release answered.

Every HTTP response carries `X-Version: <version>` (and so does the
WebSocket handshake), so tests and `zerodown verify` can see which release
served each request.

    GET  /                any other GET/HEAD path answers the same: 200 "<version>\\n"
    GET  /health          200 "ok"; never delayed, never failed on purpose
    GET  /slow?ms=N       sleeps N ms, then answers like /
    GET  /bytes?n=N       N bytes streamed in 64 KiB chunks; byte i is i % 256
    GET  /headers         the request headers as one JSON object: names lower-case,
                          a repeated header's values joined with ", "
    GET  /request         JSON: method, path, query string, HTTP version, client and
                          the raw header list (repeats and order kept)
    GET  /status?code=N   that status (200-599); no body for 204 and 304
    POST (any path)       the body echoed back as it arrives (also PUT and PATCH), in
                          bounded memory; Content-Type and Content-Length copied
    WS   /ws              every message echoed back
    POST /login           the login flow (demo/sessions.py): a user name in, a session out;
    GET  /me              200 with the user, or 401; 503 when the session store failed
    POST /logout          (where the session lives: --sessions memory|redis|jwt)

`--error-rate` and `--latency` apply to every request except /health.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from zerodown.demo.sessions import SESSION_PATHS

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

CHUNK_SIZE = 64 * 1024
SLOW_DEFAULT_MS = 1000
MAX_SLOW_MS = 3_600_000
MAX_BYTES = 1 << 50
ECHO_METHODS = frozenset({"POST", "PUT", "PATCH"})
NO_BODY_STATUSES = frozenset({204, 304})  # RFC 9110 15.3.5, 15.4.5

_PATTERN = bytes(range(256)) * (CHUNK_SIZE // 256)
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"


class BadQuery(ValueError):
    """A query parameter is missing its number or is out of range: the client gets 400."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    version: str
    error_rate: float = 0.0  # share of non-health requests answered 500
    latency_ms: float = 0.0  # added before every non-health request


class DemoApp:
    """The ASGI application (lifespan off: there is nothing to set up)."""

    def __init__(
        self,
        settings: DemoSettings,
        rng: random.Random | None = None,
        sessions: Callable[..., Awaitable[None]] | None = None,  # an ASGI app
    ) -> None:
        self.settings = settings
        self._sessions = sessions  # the login flow's app; None: those paths are ordinary ones
        self._rng = rng or random.Random()
        self._version_body = f"{settings.version}\n".encode()
        self._version_header = (b"x-version", settings.version.encode())
        self._routes: dict[str, Handler] = {
            "/health": self._health,
            "/slow": self._slow,
            "/bytes": self._bytes,
            "/headers": self._headers,
            "/request": self._request,
            "/status": self._status,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/health":
            await self._delay()
            if self._rng.random() < self.settings.error_rate:
                await self._respond(send, 500, b"injected error\n")
                return
        if self._sessions is not None and scope["path"] in SESSION_PATHS:
            handler: Handler = self._sessions
        elif scope["method"] in ECHO_METHODS:
            handler = self._echo
        else:
            handler = self._routes.get(scope["path"], self._root)
        try:
            await handler(scope, receive, send)
        except BadQuery as exc:  # raised before the response starts
            await self._respond(send, 400, f"{exc}\n".encode())

    async def _delay(self) -> None:
        if self.settings.latency_ms > 0:
            await asyncio.sleep(self.settings.latency_ms / 1000)

    async def _root(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._respond(send, 200, self._version_body)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._respond(send, 200, b"ok")

    async def _slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        ms = _int_query(scope, "ms", SLOW_DEFAULT_MS, 0, MAX_SLOW_MS)
        await asyncio.sleep(ms / 1000)
        await self._respond(send, 200, self._version_body)

    async def _bytes(self, scope: Scope, receive: Receive, send: Send) -> None:
        left = _int_query(scope, "n", CHUNK_SIZE, 0, MAX_BYTES)
        headers = [(b"content-type", b"application/octet-stream")]
        await self._start(send, 200, [*headers, (b"content-length", b"%d" % left)])
        if scope["method"] == "HEAD":
            left = 0
        # Every chunk is the same prefix of the pattern, so byte i is i % 256.
        while left > CHUNK_SIZE:
            await send({"type": "http.response.body", "body": _PATTERN, "more_body": True})
            left -= CHUNK_SIZE
        await send({"type": "http.response.body", "body": _PATTERN[:left]})

    async def _headers(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen: dict[str, str] = {}
        for name, value in _decoded_headers(scope):
            seen[name] = f"{seen[name]}, {value}" if name in seen else value
        await self._respond_json(send, seen, indent=1)

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        await self._respond_json(
            send,
            {
                "method": scope["method"],
                "path": scope["path"],
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "http_version": scope["http_version"],
                "client": list(client) if client else None,
                "headers": [list(pair) for pair in _decoded_headers(scope)],
            },
        )

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        code = _int_query(scope, "code", 200, 200, 599)
        await self._respond(send, code, b"" if code in NO_BODY_STATUSES else b"%d\n" % code)

    async def _echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        copied = {b"content-type", b"content-length"}
        headers = [(n.lower(), v) for n, v in scope["headers"] if n.lower() in copied]
        # Read before answering: the first receive() is what makes uvicorn send
        # "100 Continue" to a client that asked for it (RFC 9110 10.1.1).
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away before sending anything
        await self._start(send, 200, headers)
        while True:
            more = bool(message.get("more_body", False))
            body = message.get("body", b"")
            await send({"type": "http.response.body", "body": body, "more_body": more})
            if not more:
                return
            message = await receive()  # uvicorn stops reading the socket while we lag
            if message["type"] != "http.request":
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if scope["path"] != "/ws":
            await send({"type": "websocket.close", "code": 1008})  # handshake refused: 403
            return
        await self._delay()
        await send({"type": "websocket.accept", "headers": [self._version_header]})
        while (message := await receive())["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})

    async def _respond(self, send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-type", _TEXT)] if body else []
        if status not in NO_BODY_STATUSES:
            headers.append((b"content-length", b"%d" % len(body)))
        await self._start(send, status, headers)
        await send({"type": "http.response.body", "body": body})

    async def _respond_json(self, send: Send, value: object, indent: int | None = None) -> None:
        body = json.dumps(value, indent=indent).encode() + b"\n"
        headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body))]
        await self._start(send, 200, headers)
        await send({"type": "http.response.body", "body": body})

    async def _start(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        headers = [*headers, self._version_header]
        await send({"type": "http.response.start", "status": status, "headers": headers})


def _decoded_headers(scope: Scope) -> list[tuple[str, str]]:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in scope["headers"]]


def _int_query(scope: Scope, name: str, default: int, low: int, high: int) -> int:
    values = parse_qs(scope["query_string"].decode("latin-1")).get(name)
    if not values:
        return default
    try:
        number = int(values[0])
    except ValueError:
        raise BadQuery(f"{name}={values[0]!r} is not an integer") from None
    if not low <= number <= high:
        raise BadQuery(f"{name}={number} is outside {low}..{high}")
    return number
