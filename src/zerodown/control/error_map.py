"""How a refusal or a failure becomes an admin API answer.

Errors are always `{"error": "<one line>", "detail": ...}`, the one shape
the CLI reads. Bad input is 400, not FastAPI's 422: the house rule is that
bad client input is a 400. Its detail lists pydantic's errors, each naming
the field it is about, e.g. `services.0.stable.targets.0.weight`. An error
the library raises maps by type (`ERROR_STATUS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from zerodown.control.wire import JSON_TYPE
from zerodown.errors import (
    ConfigError,
    DataPlaneError,
    DeployBusy,
    DeployError,
    IllegalTransition,
    NotDeployable,
    UnknownService,
    ZerodownError,
)

__all__ = ["ERROR_STATUS", "add_error_handlers"]

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
    (DataPlaneError, 503),
    (ZerodownError, 500),
)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error `app` meets in the error shape."""

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
