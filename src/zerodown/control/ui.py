"""The dashboard: a page at /ui, served by the admin API, with no build step.

    GET /ui            the page (index.html)
    GET /ui/app.js     what it does, as ES modules (app.js imports views.js,
                       rates.js, dom.js): vanilla JS, charts drawn as inline SVG
    GET /ui/app.css, /ui/favicon.svg

The files are package data (ui_assets/), read once. The page itself holds
no secret and needs no token: it asks the operator for the admin token,
keeps it in sessionStorage (never in a URL, so never in a log, a history or
a Referer) and sends it as `Authorization: Bearer` on every API call. The
event stream is read with fetch() rather than EventSource, which cannot set
that header. The API it calls is the admin API as it is, with its own
guards (auth.py): a token on every call, JSON-only state changes, and no
CORS headers at all, so another origin can neither read nor act.

What this module guards itself, since it answers before those guards run
(it is the outermost middleware, so that the page loads without a token):

- `Host` must be an IP address or a localhost name. DNS rebinding points an
  attacker's name at this listener; the browser then sends that name in
  Host. Served there, the page would put the token the operator types into
  the attacker's origin's sessionStorage, for the attacker's own page to
  read once the name points back. An IP literal cannot be rebound.
- A Content-Security-Policy that allows this origin's script, style and
  API only (no inline script, nothing from the internet), and no framing
  (`frame-ancestors 'none'`, X-Frame-Options) against clickjacking of the
  action buttons.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from zerodown.control.auth import address_host, is_loopback

__all__ = ["ASSETS", "SECURITY_HEADERS", "UI_PATH", "Dashboard", "add_dashboard", "host_allowed"]

UI_PATH: Final = "/ui"


@dataclass(frozen=True, slots=True)
class Asset:
    file: str
    media_type: str


# Path -> file in ui_assets/. Nothing else under /ui is served.
ASSETS: Final = {
    UI_PATH: Asset("index.html", "text/html; charset=utf-8"),
    f"{UI_PATH}/": Asset("index.html", "text/html; charset=utf-8"),
    **{
        f"{UI_PATH}/{name}": Asset(name, "text/javascript; charset=utf-8")
        for name in ("app.js", "views.js", "rates.js", "dom.js")
    },
    f"{UI_PATH}/app.css": Asset("app.css", "text/css; charset=utf-8"),
    f"{UI_PATH}/favicon.svg": Asset("favicon.svg", "image/svg+xml"),
}
CSP: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",  # the admin API, on this origin only
        "base-uri 'none'",
        "form-action 'none'",  # the token form is handled in script, never submitted
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The assets change with the installed version; a revalidation is cheap.
    "Cache-Control": "no-cache",
}


def add_dashboard(app: FastAPI) -> None:
    """Serve /ui on `app`. Call it after every other middleware: it must run first."""
    app.add_middleware(Dashboard)


def host_allowed(host_header: str | None) -> bool:
    """A Host the page may be served to: an IP address or a localhost name.

    None (no Host: HTTP/1.0 tools) is not a browser's request, so allowed.
    """
    if host_header is None:
        return True
    host = address_host(host_header.strip()).rstrip(".")
    if is_loopback(host) or host.lower().endswith(".localhost"):  # RFC 6761 §6.3
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Dashboard:
    """ASGI middleware: answers the paths in ASSETS, passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        folder = files("zerodown.control") / "ui_assets"
        self.bodies = {path: (folder / asset.file).read_bytes() for path, asset in ASSETS.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == UI_PATH or path.startswith(UI_PATH + "/")):
            await self.app(scope, receive, send)
            return
        await self._respond(scope)(scope, receive, send)

    def _respond(self, scope: Scope) -> Response:
        host = next((v for k, v in scope["headers"] if k == b"host"), None)
        if not host_allowed(None if host is None else host.decode("latin-1")):
            message = "the dashboard is served only to an IP address or a localhost name (Host)"
            return _error(421, message)  # RFC 9110 §15.5.20: not for this server's names
        asset = ASSETS.get(scope["path"])
        if asset is None:
            return _error(404, f"no {scope['path']} in the dashboard")
        if scope["method"] not in ("GET", "HEAD"):
            return _error(405, f"{scope['method']} not allowed on the dashboard", Allow="GET, HEAD")
        body = b"" if scope["method"] == "HEAD" else self.bodies[scope["path"]]
        response = Response(body, media_type=asset.media_type, headers=SECURITY_HEADERS)
        if scope["method"] == "HEAD":
            response.headers["Content-Length"] = str(len(self.bodies[scope["path"]]))
        return response


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    # The admin API's error shape (error_map.py), with the page's headers.
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS | headers)
