"""Who may use the admin API: a bearer token, and loopback-only without one.

The admin API can rewrite the routing table, so it is either reachable from
this machine only (loopback, the default) or guarded by `ZERODOWN_TOKEN`.
`require_token_for` is the start-up check; `BearerAuth` guards each request
when there is a token, `LoopbackHostOnly` and `SameOriginOnly` when there is
none. `JsonOnly` holds with or without a token.

Why both of the last two: a browser attaches nothing secret to a request to
a tokenless API, so any page the operator has open could otherwise POST to
it. `SameOriginOnly` refuses what the browser says came from another site
(`Origin`, `Sec-Fetch-Site`); `JsonOnly` refuses what an HTML form or a
"simple" cross-origin fetch can send at all (they cannot set
`Content-Type: application/json` without a CORS preflight, which this API
never grants), so even a browser that sends neither header cannot act.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Final

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from zerodown.control.wire import JSON_TYPE, STATE_CHANGING
from zerodown.errors import ConfigError

# Liveness probes (systemd, a load balancer) must work without the secret;
# the deploy hook is authenticated by its own HMAC signature (hooks.py).
OPEN_PATHS: Final = frozenset({"/v1/health", "/v1/hooks/deploy"})
# RFC 6455 §7.4.1 "policy violation": the closest WebSocket close code to 401.
WS_POLICY_VIOLATION: Final = 1008
# Fetch Metadata (W3C): "same-origin" is this API's own page, "none" is the
# user typing the URL or a bookmark. "same-site" is another port or subdomain
# of the same site: another origin all the same, so refused.
ALLOWED_FETCH_SITES: Final = frozenset({b"same-origin", b"none"})


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


class SameOriginOnly:
    """ASGI middleware for an API without a token: refuse requests a browser sent cross-site.

    An `Origin` other than this API's own (scheme + the Host the request was
    sent to, which `LoopbackHostOnly` already vouched for) or a
    `Sec-Fetch-Site` other than same-origin/none means a page of another
    origin made the operator's browser send it. Clients that are not
    browsers (the CLI, curl) send neither header and pass.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = None if _exempt(scope) else cross_site_reason(scope)
        if reason is None:
            await self.app(scope, receive, send)
        else:
            await _refuse(scope, receive, send, _error(403, *reason))


class JsonOnly:
    """ASGI middleware: a state-changing request must say `Content-Type: application/json`.

    Even one without a body (promote, abort): the header is what a
    cross-site HTML form cannot send, so it is the proof that the caller is
    not one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = content_type_reason(scope) if scope["type"] == "http" else None
        if reason is None:
            await self.app(scope, receive, send)
        else:
            await _refuse(scope, receive, send, _error(415, *reason))


def cross_site_reason(scope: Scope) -> tuple[str, dict[str, str]] | None:
    """Why a request came from another site (message, detail), or None if it did not."""
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in ALLOWED_FETCH_SITES:
        shown = fetch_site.decode("latin-1")
        return f"cross-site request refused (Sec-Fetch-Site: {shown})", {"sec_fetch_site": shown}
    origin = _header(scope, b"origin")
    if origin is not None and origin.strip().lower() != own_origin(scope):
        shown = origin.decode("latin-1")
        return f"cross-origin request refused (Origin: {shown})", {"origin": shown}
    return None


def own_origin(scope: Scope) -> bytes:
    """This API's origin as a browser would write it (RFC 6454 §6.1), from the request.

    The Host header rather than the listener's address: a browser that
    opened http://localhost:9900 says so in both Origin and Host, while the
    listener is 127.0.0.1:9900. A ws:// request's page origin is http://.
    """
    given = str(scope.get("scheme", "http"))
    scheme = {"ws": "http", "wss": "https"}.get(given, given)
    host = (_header(scope, b"host") or b"").strip().lower()
    default_port = b":443" if scheme == "https" else b":80"
    return scheme.encode() + b"://" + host.removesuffix(default_port)


def content_type_reason(scope: Scope) -> tuple[str, dict[str, str]] | None:
    """Why a request's content type is refused (message, detail), or None."""
    if scope["method"].upper() not in STATE_CHANGING:
        return None
    value = _header(scope, b"content-type") or b""
    media_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
    if media_type == JSON_TYPE:
        return None
    shown = value.decode("latin-1") or "(none)"
    method = scope["method"]
    message = f"{method} needs Content-Type: {JSON_TYPE} (even without a body), got {shown}"
    return message, {"content_type": shown, "expected": JSON_TYPE}


def _exempt(scope: Scope) -> bool:
    return scope["type"] == "lifespan" or scope["path"] in OPEN_PATHS


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


async def _refuse(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    if scope["type"] == "websocket":
        await WebSocketClose(WS_POLICY_VIOLATION)(scope, receive, send)
    else:
        await response(scope, receive, send)


def _error(status: int, message: str, detail: dict[str, str]) -> JSONResponse:
    # The admin API's error shape (error_map.py), built here because a
    # middleware answers before FastAPI's exception handlers could.
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def _unauthorized() -> JSONResponse:
    # RFC 6750 §3: a 401 names the scheme the client should use.
    return JSONResponse(
        {"error": "missing or wrong bearer token"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )
