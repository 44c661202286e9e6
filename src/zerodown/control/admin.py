"""The admin API: the data plane's routing table, stats and metrics, and the
control plane's deploys, over HTTP.

    GET  /v1/health    {"ok": true, "pid": N}; liveness, never needs the token
    GET  /v1/routing   the RoutingTable in force
    PUT  /v1/routing   replace it; body is a RoutingTable; answers the table applied.
                       Every configured service stays, under its name (400); a service
                       zerodown runs comes unchanged (409: deploy or roll back instead)
    GET  /v1/stats     counters (the typed shape of zerodown.dataplane.stats)
    GET  /metrics      the same counters, Prometheus text format 0.0.4
    GET  /openapi.json

    POST /v1/services/{service}/deploys   {"version", "strategy"?} -> 202 {"deploy_id", "url"}
    GET  /v1/deploys/{id}                 DeployView
    GET  /v1/deploys/{id}/wait?timeout=S  DeployView once it has an outcome, or at S (<= 300)
    GET  /v1/status                       [StatusView]
    GET  /v1/services/{service}/status    StatusView
    GET  /v1/services/{service}/releases  [ReleaseView]
    POST /v1/services/{service}/rollback  {"to"?} -> 202 {"deploy_id", "url"}
    POST /v1/services/{service}/promote | abort | pause | resume -> {"ok": true}
    GET  /v1/events?after=ID&service=S    Server-Sent Events, one per EventView

The views are the dicts zerodown.deploy.control documents. Without a
control plane (a plain proxy) the deploy routes answer 503.

Errors are always `{"error": "<one line>", "detail": ...}`. Bad input is 400,
not FastAPI's 422: the house rule is that bad client input is a 400. Its
detail lists pydantic's errors, each naming the field it is about, e.g.
`services.0.stable.targets.0.weight`. An error the data plane raises while
applying maps by type (`ERROR_STATUS`).

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

`AdminServer` runs the app with uvicorn on the *current* event loop, beside
the data plane, because the handlers read the data plane's live state. Its
stop() ends open event streams first (`end_streams`), so they cannot hold
the daemon's shutdown for the whole graceful timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Final

import uvicorn
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from zerodown import __version__
from zerodown.config.strategy import StrategyName
from zerodown.control.auth import (
    BearerAuth,
    JsonOnly,
    LoopbackHostOnly,
    SameOriginOnly,
    require_token_for,
)
from zerodown.dataplane.base import DataPlane
from zerodown.dataplane.stats import Stats
from zerodown.deploy.control import ControlPlane, View
from zerodown.errors import (
    ConfigError,
    DataPlaneError,
    DeployBusy,
    DeployError,
    IllegalTransition,
    ListenError,
    NotDeployable,
    UnknownService,
    Unsupported,
    ZerodownError,
)
from zerodown.routing import RoutingTable

__all__ = [
    "ERROR_STATUS",
    "PROMETHEUS_CONTENT_TYPE",
    "SSE_KEEPALIVE",
    "AdminServer",
    "check_replacement",
    "create_admin_app",
    "end_streams",
    "reopen_streams",
    "require_token_for",
]

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE: Final = "application/json"

# First match wins, so subclasses come before their bases.
ERROR_STATUS: Final[tuple[tuple[type[ZerodownError], int], ...]] = (
    (ConfigError, 400),
    (UnknownService, 404),
    (DeployBusy, 409),
    (NotDeployable, 409),
    # The request was well-formed but the deploy cannot go ahead (a health
    # gate that already failed, a release that cannot be built, ...).
    (DeployError, 422),
    (IllegalTransition, 409),
    (Unsupported, 501),
    (DataPlaneError, 503),
    (ZerodownError, 500),
)

STARTUP_TIMEOUT: Final = 10.0  # seconds for uvicorn to start serving the bound socket
# Seconds stop() lets in-flight admin requests finish; without a bound,
# uvicorn waits for them forever.
SHUTDOWN_TIMEOUT: Final = 5

WAIT_DEFAULT: Final = 30.0  # seconds a long poll on a deploy waits unless told
# A long poll holds a connection and a task; past this a client polls again.
WAIT_MAX: Final = 300.0
# Seconds between SSE comments on an idle stream: proxies and load balancers
# close connections idle for ~60 s, and a client that went away is only
# noticed when a write to it fails.
SSE_KEEPALIVE: Final = 15.0
SSE_TYPE: Final = "text/event-stream"
ACTIONS: Final = ("promote", "abort", "pause", "resume")
# Deploy and event ids are SQLite INTEGERs (signed 64-bit). A larger number
# names nothing; passed on, it would overflow in the store (a 500).
MAX_ID: Final = 2**63 - 1


def create_admin_app(
    dataplane: DataPlane, token: str | None, control: ControlPlane | None = None
) -> FastAPI:
    """The admin API over `dataplane` and `control`; `token` None or empty leaves it open.

    `control` None (a plain proxy, no orchestrator) makes the deploy routes answer 503.
    """
    # No /docs or /redoc: they load their scripts from a CDN and cannot send
    # the bearer token anyway. /openapi.json is enough for tools.
    app = FastAPI(title="zerodown admin", version=__version__, docs_url=None, redoc_url=None)
    app.state.closing = asyncio.Event()  # see end_streams()
    _add_error_handlers(app)
    _add_routes(app, dataplane, control)
    _add_deploy_routes(app, control)
    # The last added runs first: who may ask (401/403) before how they asked (415).
    app.add_middleware(JsonOnly)
    if token:
        app.add_middleware(BearerAuth, token=token)
    else:
        app.add_middleware(SameOriginOnly)
        app.add_middleware(LoopbackHostOnly)
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
        run = {view["service"] for view in control.status()} if control is not None else set()
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


# -- deploys ---------------------------------------------------------------------

# Versions end up in paths (state_dir/logs/<service>/<version>/) and command
# lines: no separators, no leading dot (".." would climb out of the log dir).
VERSION_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=128, pattern=VERSION_PATTERN)
    strategy: StrategyName | None = None  # None: the service's configured strategy


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(default=None, min_length=1, max_length=128, pattern=VERSION_PATTERN)


class DeployAccepted(BaseModel):
    deploy_id: int
    url: str  # where to follow it: GET this, or this + "/wait"


class Done(BaseModel):
    ok: bool = True


def _add_deploy_routes(app: FastAPI, control: ControlPlane | None) -> None:
    # Registered even without a control plane, so the API (and /openapi.json)
    # has one shape and a client hears "no control plane" rather than 404.
    def plane() -> ControlPlane:
        if control is None:
            raise HTTPException(503, "no control plane")
        return control

    @app.post("/v1/services/{service}/deploys", status_code=202)
    async def deploy(service: str, body: DeployRequest, response: Response) -> DeployAccepted:
        deploy_id = await plane().deploy(service, body.version, body.strategy)
        return _accepted(deploy_id, response)

    @app.get("/v1/deploys/{deploy_id}")
    async def deploy_view(deploy_id: int) -> View:
        return _found(plane().deploy_view(_storable(deploy_id)), deploy_id)

    @app.get("/v1/deploys/{deploy_id}/wait")
    async def wait(
        deploy_id: int, timeout: Annotated[float, Query(ge=0, le=WAIT_MAX)] = WAIT_DEFAULT
    ) -> View:
        return _found(await plane().wait(_storable(deploy_id), timeout), deploy_id)

    @app.get("/v1/status")
    async def status_all() -> list[View]:
        return plane().status()

    @app.get("/v1/services/{service}/status")
    async def status(service: str) -> View:
        return plane().status(service)[0]

    @app.get("/v1/services/{service}/releases")
    async def releases(service: str) -> list[View]:
        return plane().releases(service)

    @app.post("/v1/services/{service}/rollback", status_code=202)
    async def rollback(
        service: str, response: Response, body: RollbackRequest | None = None
    ) -> DeployAccepted:
        deploy_id = await plane().rollback(service, body.to if body else None)
        return _accepted(deploy_id, response)

    for action in ACTIONS:
        _add_action(app, action, plane)

    @app.get("/v1/events", response_class=StreamingResponse)
    async def events(
        after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        service: str | None = None,
        last_event_id: Annotated[int | None, Header(ge=0, le=MAX_ID)] = None,
    ) -> StreamingResponse:
        source = plane()
        if service is not None:
            source.status(service)  # an unknown name is a 404 now, not a silent stream
        # An EventSource that reconnects says where it was in Last-Event-ID.
        start = after if after is not None else (last_event_id or 0)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        stream = _sse(source.events(start, service), _closing(app))
        return StreamingResponse(stream, media_type=SSE_TYPE, headers=headers)


def end_streams(app: ASGIApp) -> None:
    """End the app's open event streams (AdminServer.stop does this first).

    An event stream never ends by itself, so without this uvicorn's shutdown
    would wait SHUTDOWN_TIMEOUT for it and then cancel it with a traceback.
    """
    closing = getattr(getattr(app, "state", None), "closing", None)
    if isinstance(closing, asyncio.Event):
        closing.set()


def reopen_streams(app: ASGIApp) -> None:
    """Let event streams run again after end_streams (AdminServer.start does this)."""
    closing = getattr(getattr(app, "state", None), "closing", None)
    if isinstance(closing, asyncio.Event):
        closing.clear()


def _closing(app: FastAPI) -> asyncio.Event:
    closing: asyncio.Event = app.state.closing
    return closing


def _add_action(app: FastAPI, action: str, plane: Callable[[], ControlPlane]) -> None:
    """POST /v1/services/{service}/<action>: promote, abort, pause or resume."""

    async def act(service: str) -> Done:
        getattr(plane(), action)(service)
        return Done()

    app.post(f"/v1/services/{{service}}/{action}", name=action, operation_id=action)(act)


def _accepted(deploy_id: int, response: Response) -> DeployAccepted:
    url = f"/v1/deploys/{deploy_id}"
    response.headers["Location"] = url
    return DeployAccepted(deploy_id=deploy_id, url=url)


def _storable(deploy_id: int) -> int:
    """`deploy_id` if the store could hold it; else 404 here, not an OverflowError there."""
    if not 0 <= deploy_id <= MAX_ID:
        raise HTTPException(404, f"no deploy {deploy_id}")
    return deploy_id


def _found(view: View | None, deploy_id: int) -> View:
    if view is None:
        raise HTTPException(404, f"no deploy {deploy_id}")
    return view


async def _sse(events: AsyncIterator[View], closing: asyncio.Event) -> AsyncIterator[str]:
    """The events as SSE messages, a keep-alive comment when none came for a while,
    until the source ends or the server is stopping (`closing`).

    The next event is awaited in its own task and never cancelled by the
    keep-alive timer: cancelling `anext()` of an async generator would close it.
    """
    stop: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())
    pending: asyncio.Future[View] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait(
                {pending, stop}, timeout=SSE_KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                next_event, pending = pending, None
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    return
                yield _sse_message(event)
            elif stop in done:
                return  # ending the response lets uvicorn stop without waiting us out
            else:
                yield ": keep-alive\n\n"
    finally:
        stop.cancel()
        await _close(events, pending)


def _sse_message(event: View) -> str:
    # json.dumps never emits a raw newline, so the data fits the one line SSE needs.
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {data}\n\n"


async def _close(events: AsyncIterator[View], pending: asyncio.Future[View] | None) -> None:
    """Stop the source when the client went away or the stream ended."""
    if pending is not None:
        pending.cancel()
        await asyncio.wait({pending})  # let the cancel land before closing the generator
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if isinstance(exc.body, bytes) and exc.body:
            # FastAPI parses a body only when it is declared JSON (a browser
            # may send other types cross-site without a CORS preflight), so
            # `curl -d` (form-encoded) lands here: say that, not "not a dict".
            return _error(415, f"send the body as JSON, with Content-Type: {JSON_TYPE}")
        detail = [_describe(error) for error in exc.errors()]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in detail)
        return _error(400, f"invalid request: {summary}", detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(ZerodownError)
    async def refused(request: Request, exc: ZerodownError) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS if isinstance(exc, kind))
        return _error(status, str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # A bug still answers in the error shape the CLI reads; Starlette
        # re-raises it afterwards, so uvicorn logs the traceback.
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic error, JSON-safe (its `ctx` may hold the exception object)."""
    loc = list(error.get("loc", ()))
    if loc[:1] == ["body"]:
        loc = loc[1:]  # the whole body is the table: its fields are the names people know
    kind, message = str(error.get("type", "")), str(error.get("msg", ""))
    if kind == "json_invalid":
        # FastAPI puts the character offset in `loc`; it is not a field.
        at = f" at character {loc[0]}" if loc else ""
        message = f"{message}: {error.get('ctx', {}).get('error')}{at}"
        loc = []
    return {"field": ".".join(map(str, loc)), "loc": loc, "message": message, "type": kind}


def _error(
    status: int,
    message: str,
    detail: Sequence[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = list(detail)
    return JSONResponse(body, status_code=status, headers=headers)


# -- serving ---------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn as a guest in someone else's event loop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would take SIGINT/SIGTERM with signal.signal for the time it
        # serves and raise them again on exit; the daemon owns those signals.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class AdminServer:
    """Serves an ASGI app with uvicorn on the running event loop.

    The socket is bound in `start()` before uvicorn sees it, so port 0 works
    and `.port` is the real port as soon as `start()` returns.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        # A socket already listening (handed over by an old generation) is used as is.
        self._given = sock
        self._sock: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "serving" if self._task is not None and not self._task.done() else "stopped"
        return f"<AdminServer {self.host}:{self.port if self._sock else '-'} {state}>"

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("AdminServer is not started")
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("AdminServer is already started")
        if self._sock is None:
            self._sock = self._given or _bind(self.host, self._requested_port)
        # A pause (a hot restart that failed) ended the streams by setting the
        # flag; left set, every stream opened from now on would end at once.
        reopen_streams(self.app)
        # uvicorn closes the sockets it serves when it stops: give it a
        # duplicate, so `pause` can stop serving and keep the port open.
        self._server = _EmbeddedServer(_uvicorn_config(self.app))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock.dup()]))
        ready = asyncio.create_task(self._server.ready.wait())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=STARTUP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        if ready not in done:
            cause = self._task.exception() if self._task.done() else None
            await self.stop()
            where = f"{self.host}:{self._requested_port}"
            raise DataPlaneError(f"admin API did not start on {where}") from cause

    @property
    def socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("AdminServer is not started")
        return self._sock

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the socket."""
        await self.pause()
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    async def pause(self) -> None:
        """Stop serving but keep the socket listening: new clients wait in its queue.

        `start` serves again. A hot restart pauses the old generation's API
        so that nothing (a deploy) starts there while the new one comes up.
        """
        if self._server is not None and self._task is not None:
            end_streams(self.app)
            self._server.should_exit = True
            # uvicorn's own shutdown is bounded by SHUTDOWN_TIMEOUT; the extra
            # second covers its exit polling. A server that already crashed
            # must not stop the rest of the daemon's shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, SHUTDOWN_TIMEOUT + 1.0)
        self._server, self._task = None, None


def _uvicorn_config(app: ASGIApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,  # leave the process's logging set-up alone
        log_level="warning",
        access_log=False,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restarting the daemon must not wait out TIME_WAIT on the admin port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(where, exc) from exc
    return sock
