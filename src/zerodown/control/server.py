"""`AdminServer`: the admin API served by uvicorn on the daemon's own event loop.

It runs beside the data plane's client, on the *current* loop, because the
handlers read live state that belongs to that loop. Three things a plain
`uvicorn.Server.serve()` would get wrong here:

- serve() takes SIGINT and SIGTERM with signal.signal for as long as it
  serves (and raises them again on exit); the daemon owns those signals.
- A hot restart hands the admin socket to the next generation, which serves
  it as it is (`sock`), and a hot restart that fails must serve it again:
  `pause` stops serving but keeps the socket listening, so clients wait in
  its accept queue rather than being refused.
- An event stream never ends by itself: stop ends them first (end_streams),
  else uvicorn's shutdown would wait them out.

So the server is driven step by step, as serve() itself does it (load the
config, startup on our sockets, the main loop, shutdown) but without the
signal capture around it. Every call is public uvicorn API but one: the
`lifespan` attribute, which serve() sets before startup and startup reads.
That is why pyproject.toml pins uvicorn to the versions this was checked
with: 0.32.1, 0.34.0 and 0.55.0 (tests/integration/test_admin*.py). Below
0.32.1 a client that leaves an event stream goes unnoticed, and its source
stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

import uvicorn
from starlette.types import ASGIApp

from zerodown.control.events import end_streams, reopen_streams
from zerodown.errors import DataPlaneError
from zerodown.proxy.listener import bind_listener

__all__ = ["SHUTDOWN_TIMEOUT", "STARTUP_TIMEOUT", "AdminServer"]

STARTUP_TIMEOUT: Final = 10.0  # seconds for uvicorn to start serving the bound socket
# Seconds stop() lets in-flight admin requests finish; without a bound,
# uvicorn waits for them forever.
SHUTDOWN_TIMEOUT: Final = 5
# uvicorn's main loop looks at should_exit every 0.1 s and its shutdown
# sleeps 0.1 s before it waits for connections: the margin over SHUTDOWN_TIMEOUT.
EXIT_POLLING: Final = 1.0


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
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "serving" if self._task is not None and not self._task.done() else "stopped"
        return f"<AdminServer {self.host}:{self.port if self._sock else '-'} {state}>"

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def socket(self) -> socket.socket:
        """The listening socket (a hot restart hands it to the next generation)."""
        if self._sock is None:
            raise RuntimeError("AdminServer is not started")
        return self._sock

    async def start(self) -> None:
        """Serve on the socket (binding it first, unless it was given or kept by `pause`)."""
        if self._task is not None:
            raise RuntimeError("AdminServer is already started")
        if self._sock is None:
            self._sock = self._given or bind(self.host, self._requested_port)
        # A pause (a hot restart that failed) ended the streams by setting the
        # flag; left set, every stream opened from now on would end at once.
        reopen_streams(self.app)
        # uvicorn closes the sockets it serves when it stops: give it a
        # duplicate, so `pause` can stop serving and keep the port open.
        sockets = [self._sock.dup()]
        server = uvicorn.Server(_uvicorn_config(self.app))
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await _startup(server, sockets)
        except Exception as exc:
            sockets[0].close()
            await self.stop()
            where = f"{self.host}:{self._requested_port}"
            raise DataPlaneError(f"admin API did not start on {where}") from exc
        self._server = server
        self._task = asyncio.create_task(_serve_until_exit(server, sockets))

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
            # uvicorn's own shutdown is bounded by SHUTDOWN_TIMEOUT. A server
            # that already crashed must not stop the rest of the daemon's shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, SHUTDOWN_TIMEOUT + EXIT_POLLING)
        self._server, self._task = None, None


async def _startup(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    """What `Server.serve()` does before its main loop, without taking the signals."""
    config = server.config
    config.load()
    # The one attribute set by hand: serve() creates the lifespan (here "off",
    # a no-op) before startup(), which reads it.
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=sockets)


async def _serve_until_exit(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    """Serve until `should_exit`; then stop accepting, finish requests, close `sockets`."""
    await server.main_loop()
    await server.shutdown(sockets=sockets)


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


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port (port 0: any free one);
    ListenError names the address if it cannot be bound."""
    return bind_listener(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
