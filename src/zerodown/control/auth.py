"""Who may use the admin API: a bearer token, and loopback-only without one.

The admin API can rewrite the routing table, so it is either reachable from
this machine only (loopback, the default) or guarded by `ZERODOWN_TOKEN`.
`require_token_for` is the start-up check; `BearerAuth` guards each request
when there is a token, `LoopbackHostOnly` when there is none.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Final

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from zerodown.errors import ConfigError

# Liveness probes (systemd, a load balancer) must work without the secret.
OPEN_PATHS: Final = frozenset({"/v1/health"})
# RFC 6455 §7.4.1 "policy violation": the closest WebSocket close code to 401.
WS_POLICY_VIOLATION: Final = 1008


def address_host(address: str) -> str:
    """The host of "host:port" or "[v6]:port" (a bare host is returned as is)."""
    host, sep, _ = address.rpartition(":")
    if not sep or (":" in host and not host.startswith("[")):
        return address  # no port, or a bare IPv6 address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we cannot vouch for


def require_token_for(address: str, token: str | None) -> None:
    """Refuse to open the admin API beyond loopback without a token."""
    if token or is_loopback(address_host(address)):
        return
    raise ConfigError(
        f"admin listener {address} is not loopback; set ZERODOWN_TOKEN to open it",
        key="proxy.admin",
    )


class BearerAuth:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <token>`.

    A middleware rather than a route dependency so that it also covers what
    FastAPI serves itself (/openapi.json) and unknown paths (a 404 would tell
    a caller without the token which paths exist).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _exempt(scope) or self._allowed(scope):
            await self.app(scope, receive, send)
        else:
            await _refuse(scope, receive, send, _unauthorized())

    def _allowed(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, credentials = value.partition(b" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.expected
        )


class LoopbackHostOnly:
    """ASGI middleware for an API without a token: refuse requests addressed to a non-loopback name.

    DNS rebinding: a web page can point its own name at 127.0.0.1 and then
    call this API from the operator's browser as same-origin. The browser
    still sends the page's name in Host, so a loopback-only Host check stops
    it. A request with no Host at all (HTTP/1.0 tools) is not a browser's.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _exempt(scope) or self._allowed(scope):
            await self.app(scope, receive, send)
        else:
            message = (
                "without ZERODOWN_TOKEN the admin API only answers requests to a loopback host"
            )
            await _refuse(scope, receive, send, JSONResponse({"error": message}, status_code=403))

    def _allowed(self, scope: Scope) -> bool:
        host = _header(scope, b"host")
        return host is None or is_loopback(address_host(host.decode("latin-1")))


def _exempt(scope: Scope) -> bool:
    return scope["type"] == "lifespan" or scope["path"] in OPEN_PATHS


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


async def _refuse(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    if scope["type"] == "websocket":
        await WebSocketClose(WS_POLICY_VIOLATION)(scope, receive, send)
    else:
        await response(scope, receive, send)


def _unauthorized() -> JSONResponse:
    # RFC 6750 §3: a 401 names the scheme the client should use.
    return JSONResponse(
        {"error": "missing or wrong bearer token"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )
