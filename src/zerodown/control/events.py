"""The event stream: the control plane's EventViews as Server-Sent Events.

    GET /v1/events?after=ID&service=S   (route in deploys.py)

    id: 42
    event: deploy_started
    data: {"id":42,"service":"web",...}

A comment (`: keep-alive`) goes out every SSE_KEEPALIVE seconds on an idle
stream. A stream ends when its source does, or when the server stops:
AdminServer.stop calls `end_streams` first, since a stream never ends by
itself and uvicorn's shutdown would otherwise wait it out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp

from zerodown.control.wire import SSE_KEEPALIVE
from zerodown.deploy.contract import EventView

__all__ = ["SSE_KEEPALIVE", "SSE_TYPE", "end_streams", "reopen_streams", "stream"]

SSE_TYPE: Final = "text/event-stream"
# No caching, and no buffering by a proxy in front (nginx reads X-Accel-Buffering).
SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def stream(app: FastAPI, events: AsyncIterator[EventView]) -> StreamingResponse:
    """The response that sends `events` until they end or the server stops."""
    closing: asyncio.Event = app.state.closing  # set by create_admin_app
    return StreamingResponse(_sse(events, closing), media_type=SSE_TYPE, headers=SSE_HEADERS)


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


async def _sse(events: AsyncIterator[EventView], closing: asyncio.Event) -> AsyncIterator[str]:
    """The events as SSE messages, a keep-alive comment when none came for a while,
    until the source ends or the server is stopping (`closing`).

    The next event is awaited in its own task and never cancelled by the
    keep-alive timer: cancelling `anext()` of an async generator would close it.
    """
    stop: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())
    pending: asyncio.Future[EventView] | None = None
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
                yield message(event)
            elif stop in done:
                return  # ending the response lets uvicorn stop without waiting us out
            else:
                yield ": keep-alive\n\n"
    finally:
        stop.cancel()
        await _close(events, pending)


def message(event: EventView) -> str:
    """One EventView as an SSE message."""
    # json.dumps never emits a raw newline, so the data fits the one line SSE needs.
    data = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


async def _close(
    events: AsyncIterator[EventView], pending: asyncio.Future[EventView] | None
) -> None:
    """Stop the source when the client went away or the stream ended."""
    if pending is not None:
        pending.cancel()
        await asyncio.wait({pending})  # let the cancel land before closing the generator
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
