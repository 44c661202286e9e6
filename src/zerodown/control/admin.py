"""The admin API: a data plane's routing table, stats and metrics over HTTP.

    GET  /v1/health    {"ok": true}; liveness, never needs the token
    GET  /v1/routing   the RoutingTable in force
    PUT  /v1/routing   replace it; body is a RoutingTable; answers the table applied
    GET  /v1/stats     counters (shape documented in zerodown.proxy.metrics)
    GET  /metrics      the same counters, Prometheus text format 0.0.4
    GET  /openapi.json

Errors are always `{"error": "<one line>", "detail": ...}`. Bad input is 400,
not FastAPI's 422: the house rule is that bad client input is a 400. Its
detail lists pydantic's errors, each naming the field it is about, e.g.
`services.0.stable.targets.0.weight`. An error the data plane raises while
applying maps by type (`ERROR_STATUS`).

A body must come with `Content-Type: application/json` (else 415).

With a token, every path but /v1/health needs `Authorization: Bearer
<token>` (see auth.py). Without one the API is open, which is only allowed
on loopback (`require_token_for`, checked at start by the daemon), and it
answers only requests whose Host is loopback (a DNS-rebinding guard).

`AdminServer` runs the app with uvicorn on the *current* event loop, beside
the data plane, because the handlers read the data plane's live state.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from zerodown import __version__
from zerodown.control.auth import BearerAuth, LoopbackHostOnly, require_token_for
from zerodown.dataplane.base import DataPlane
from zerodown.errors import (
    ConfigError,
    DataPlaneError,
    IllegalTransition,
    Unsupported,
    ZerodownError,
)
from zerodown.routing import RoutingTable

__all__ = [
    "ERROR_STATUS",
    "PROMETHEUS_CONTENT_TYPE",
    "AdminServer",
    "create_admin_app",
    "require_token_for",
]

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE: Final = "application/json"

# First match wins, so subclasses come before their bases.
ERROR_STATUS: Final[tuple[tuple[type[ZerodownError], int], ...]] = (
    (ConfigError, 400),
    (IllegalTransition, 409),
    (Unsupported, 501),
    (DataPlaneError, 503),
    (ZerodownError, 500),
)

STARTUP_TIMEOUT: Final = 10.0  # seconds for uvicorn to start serving the bound socket
# Seconds stop() lets in-flight admin requests finish; without a bound,
# uvicorn waits for them forever.
SHUTDOWN_TIMEOUT: Final = 5


def create_admin_app(dataplane: DataPlane, token: str | None) -> FastAPI:
    """The admin API over `dataplane`; `token` None or empty leaves it open."""
    # No /docs or /redoc: they load their scripts from a CDN and cannot send
    # the bearer token anyway. /openapi.json is enough for tools.
    app = FastAPI(title="zerodown admin", version=__version__, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_routes(app, dataplane)
    if token:
        app.add_middleware(BearerAuth, token=token)
    else:
        app.add_middleware(LoopbackHostOnly)
    return app


def _add_routes(app: FastAPI, dataplane: DataPlane) -> None:
    # Every handler is `async def` on purpose: FastAPI runs plain `def`
    # handlers in a thread pool, and the data plane's state belongs to the
    # event loop thread (a dict resized mid-iteration would crash stats()).

    @app.get("/v1/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/routing")
    async def get_routing() -> RoutingTable:
        return dataplane.routing()

    @app.put("/v1/routing")
    async def put_routing(table: RoutingTable) -> RoutingTable:
        await dataplane.apply(table)
        return dataplane.routing()

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return dataplane.stats()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(dataplane.prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)


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

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
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
        self._sock = _bind(self.host, self._requested_port)
        self._server = _EmbeddedServer(_uvicorn_config(self.app))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
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

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the socket."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            # uvicorn's own shutdown is bounded by SHUTDOWN_TIMEOUT; the extra
            # second covers its exit polling. A server that already crashed
            # must not stop the rest of the daemon's shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, SHUTDOWN_TIMEOUT + 1.0)
        if self._sock is not None:
            self._sock.close()
        self._sock, self._server, self._task = None, None, None


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
    except OSError:
        sock.close()
        raise
    return sock
