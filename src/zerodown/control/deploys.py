"""The admin API's deploy routes: thin HTTP over the ControlPlane.

    POST /v1/services/{service}/deploys   {"version", "strategy"?} -> 202 {"deploy_id", "url"}
    GET  /v1/deploys/{id}                 DeployView
    GET  /v1/deploys/{id}/wait?timeout=S  DeployView once it has an outcome, or at S (<= WAIT_MAX)
    GET  /v1/status                       [StatusView]
    GET  /v1/services/{service}/status    StatusView
    GET  /v1/services/{service}/releases  [ReleaseView]
    POST /v1/services/{service}/rollback  {"to"?} -> 202 {"deploy_id", "url"}
    POST /v1/services/{service}/promote | abort | pause | resume -> {"ok": true}
    GET  /v1/events?after=ID&service=S    Server-Sent Events, one per EventView (events.py)

Registered even without a control plane (a plain proxy), so the API (and
/openapi.json) has one shape and a client hears 503 "no control plane"
rather than 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final

from fastapi import FastAPI, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from zerodown.config.strategy import StrategyName
from zerodown.control.events import stream
from zerodown.control.wire import WAIT_DEFAULT, WAIT_MAX
from zerodown.deploy.contract import ControlPlane, DeployView, ReleaseView, StatusView

__all__ = ["ACTIONS", "MAX_ID", "VERSION_PATTERN", "add_deploy_routes"]

ACTIONS: Final = ("promote", "abort", "pause", "resume")
# Deploy and event ids are SQLite INTEGERs (signed 64-bit). A larger number
# names nothing; passed on, it would overflow in the store (a 500).
MAX_ID: Final = 2**63 - 1
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


def add_deploy_routes(app: FastAPI, control: ControlPlane | None) -> None:
    """The routes above on `app`; with `control` None each answers 503."""

    def plane() -> ControlPlane:
        if control is None:
            raise HTTPException(503, "no control plane")
        return control

    _add_deploy_routes(app, plane)
    _add_service_routes(app, plane)
    for action in ACTIONS:
        _add_action(app, action, plane)
    _add_event_route(app, plane)


def _add_deploy_routes(app: FastAPI, plane: Callable[[], ControlPlane]) -> None:
    @app.post("/v1/services/{service}/deploys", status_code=202)
    async def deploy(service: str, body: DeployRequest, response: Response) -> DeployAccepted:
        deploy_id = await plane().deploy(service, body.version, body.strategy)
        return _accepted(deploy_id, response)

    @app.get("/v1/deploys/{deploy_id}", response_model=DeployView)
    async def deploy_view(deploy_id: int) -> DeployView:
        return _found(plane().deploy_view(_storable(deploy_id)), deploy_id)

    @app.get("/v1/deploys/{deploy_id}/wait", response_model=DeployView)
    async def wait(
        deploy_id: int, timeout: Annotated[float, Query(ge=0, le=WAIT_MAX)] = WAIT_DEFAULT
    ) -> DeployView:
        return _found(await plane().wait(_storable(deploy_id), timeout), deploy_id)


def _add_service_routes(app: FastAPI, plane: Callable[[], ControlPlane]) -> None:
    # Route order is /openapi.json's order, kept as it was before the split.
    @app.get("/v1/status", response_model=list[StatusView])
    async def status_all() -> list[StatusView]:
        return plane().status()

    @app.get("/v1/services/{service}/status", response_model=StatusView)
    async def status(service: str) -> StatusView:
        return plane().status(service)[0]

    @app.get("/v1/services/{service}/releases", response_model=list[ReleaseView])
    async def releases(service: str) -> list[ReleaseView]:
        return plane().releases(service)

    @app.post("/v1/services/{service}/rollback", status_code=202)
    async def rollback(
        service: str, response: Response, body: RollbackRequest | None = None
    ) -> DeployAccepted:
        deploy_id = await plane().rollback(service, body.to if body else None)
        return _accepted(deploy_id, response)


def _add_action(app: FastAPI, action: str, plane: Callable[[], ControlPlane]) -> None:
    """POST /v1/services/{service}/<action>: promote, abort, pause or resume."""

    async def act(service: str) -> Done:
        getattr(plane(), action)(service)
        return Done()

    app.post(f"/v1/services/{{service}}/{action}", name=action, operation_id=action)(act)


def _add_event_route(app: FastAPI, plane: Callable[[], ControlPlane]) -> None:
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
        return stream(app, source.events(start, service))


def _accepted(deploy_id: int, response: Response) -> DeployAccepted:
    url = f"/v1/deploys/{deploy_id}"
    response.headers["Location"] = url
    return DeployAccepted(deploy_id=deploy_id, url=url)


def _storable(deploy_id: int) -> int:
    """`deploy_id` if the store could hold it; else 404 here, not an OverflowError there."""
    if not 0 <= deploy_id <= MAX_ID:
        raise HTTPException(404, f"no deploy {deploy_id}")
    return deploy_id


def _found(view: DeployView | None, deploy_id: int) -> DeployView:
    if view is None:
        raise HTTPException(404, f"no deploy {deploy_id}")
    return view
