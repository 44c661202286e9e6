"""The admin API: the data plane's routing table, stats and metrics, and the
control plane's deploys, over HTTP. `create_admin_app` builds it; each job
has its own module:

    admin.py      this: the app, and the data plane's routes below
    deploys.py    the deploy routes over the ControlPlane (deploys, status, releases, actions)
    events.py     the event stream (Server-Sent Events)
    error_map.py  errors in one shape, by type (ERROR_STATUS)
    auth.py       who may ask: bearer token, or loopback and same-origin without one
    ui.py         the dashboard page at /ui
    server.py     AdminServer: uvicorn on the daemon's event loop
    wire.py       what the client and the server agree on (token variable, long-poll bounds)

    GET  /v1/health    {"ok": true, "pid": N}; liveness, never needs the token
    GET  /v1/routing   the RoutingTable in force
    PUT  /v1/routing   replace it; body is a RoutingTable; answers the table applied.
                       Every configured service stays, under its name (400); a service
                       zerodown runs comes unchanged (409: deploy or roll back instead)
    GET  /v1/stats     counters (the typed shape of zerodown.stats)
    GET  /metrics      the same counters, Prometheus text format 0.0.4
    GET  /openapi.json
    ...  /v1/services/..., /v1/deploys/..., /v1/status, /v1/events: deploys.py

The views are the models zerodown.deploy.contract defines. Without a
control plane (a plain proxy) the deploy routes answer 503.

Every POST, PUT, PATCH and DELETE must come with `Content-Type:
application/json`, even one without a body (else 415): an HTML form on
another site cannot send that type.

With a token, every path but /v1/health needs `Authorization: Bearer
<token>` (see auth.py). Without one the API is open, which is only allowed
on loopback (`require_token_for`, checked at start by the daemon), and it
answers only requests whose Host is loopback (a DNS-rebinding guard) and
that a browser did not send from another origin (`Origin`,
`Sec-Fetch-Site`: 403), so a web page cannot act through the operator's
browser.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException

from zerodown import __version__
from zerodown.control.auth import (
    BearerAuth,
    JsonOnly,
    LoopbackHostOnly,
    SameOriginOnly,
    require_token_for,
)
from zerodown.control.deploys import add_deploy_routes
from zerodown.control.error_map import add_error_handlers
from zerodown.control.hooks import add_hook_routes
from zerodown.control.ui import add_dashboard
from zerodown.dataplane.base import DataPlane
from zerodown.deploy.contract import ControlPlane
from zerodown.routing import RoutingTable
from zerodown.stats import Stats

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "check_replacement",
    "create_admin_app",
    "require_token_for",
]

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def create_admin_app(
    dataplane: DataPlane, token: str | None, control: ControlPlane | None = None
) -> FastAPI:
    """The admin API over `dataplane` and `control`; `token` None or empty leaves it open.

    `control` None (a plain proxy, no orchestrator) makes the deploy routes answer 503.
    """
    # No /docs or /redoc: they load their scripts from a CDN and cannot send
    # the bearer token anyway. /openapi.json is enough for tools.
    app = FastAPI(title="zerodown admin", version=__version__, docs_url=None, redoc_url=None)
    app.state.closing = asyncio.Event()  # see events.end_streams()
    add_error_handlers(app)
    _add_routes(app, dataplane, control)
    add_deploy_routes(app, control)
    add_hook_routes(app, control)  # POST /v1/hooks/deploy: HMAC-signed, no token (hooks.py)
    # The last added runs first: who may ask (401/403) before how they asked (415).
    app.add_middleware(JsonOnly)
    if token:
        app.add_middleware(BearerAuth, token=token)
    else:
        app.add_middleware(SameOriginOnly)
        app.add_middleware(LoopbackHostOnly)
    add_dashboard(app)  # /ui: the page loads before any token (ui.py guards it)
    return app


def _add_routes(app: FastAPI, dataplane: DataPlane, control: ControlPlane | None) -> None:
    # Every handler is `async def` on purpose: FastAPI runs plain `def`
    # handlers in a thread pool, and the data plane's state belongs to the
    # event loop thread (a dict resized mid-iteration would crash stats()).

    @app.get("/v1/health")
    async def health() -> dict[str, bool | int]:
        # The pid lets a client that started this daemon (`zerodown demo`)
        # tell its own child from another daemon on the same address.
        return {"ok": True, "pid": os.getpid()}

    @app.get("/v1/routing")
    async def get_routing() -> RoutingTable:
        return dataplane.routing()

    @app.put("/v1/routing")
    async def put_routing(table: RoutingTable) -> RoutingTable:
        run = {view.service for view in control.status()} if control is not None else set()
        check_replacement(dataplane.routing(), table, run)
        await dataplane.apply(table)
        return dataplane.routing()

    @app.get("/v1/stats")
    async def stats() -> Stats:
        return await dataplane.stats()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        text = await dataplane.prometheus()
        return PlainTextResponse(text, media_type=PROMETHEUS_CONTENT_TYPE)


def check_replacement(current: RoutingTable, new: RoutingTable, run: set[str]) -> None:
    """Refuse a table that the configuration does not allow (HTTPException 400 or 409).

    The table in force has exactly the configured services. A table without
    one would answer all its requests 503 while `status` showed the old
    split; one with a service the config lacks would be dropped again at
    the next deploy. A service zerodown runs (`run`) moves between releases
    only by deploy and rollback: a table that changes it would be undone by
    the next step, and status would not show it, so it must come unchanged.
    Fixed-upstream services may change in anything but their name.
    """
    configured = {spec.name: spec for spec in current.services}
    names = [spec.name for spec in new.services]
    for name in configured:
        if name not in names:
            raise HTTPException(
                400, f"service {name!r} is configured and may not be dropped or renamed"
            )
    for spec in new.services:
        if spec.name not in configured:
            raise HTTPException(400, f"service {spec.name!r} is not in the configuration")
        if spec.name in run and spec != configured[spec.name]:
            raise HTTPException(
                409,
                f"service {spec.name!r} is run by zerodown: its pools change by deploy and "
                f"rollback (`zerodown deploy {spec.name} VERSION`, "
                f"`zerodown rollback {spec.name}`); send it unchanged",
            )
