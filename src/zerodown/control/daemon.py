"""`zerodown serve`: the data plane and the control daemon in one process.

Shutdown runs in a fixed order (as uvicorn's does): stop the admin API, then
the proxy stops accepting, answers keep-alive clients with Connection:
close, waits for in-flight requests up to its deadline, and cuts the rest.
"""

from __future__ import annotations

import asyncio
import os
import signal

from zerodown.config import Config
from zerodown.control.admin import AdminServer, create_admin_app
from zerodown.control.auth import require_token_for
from zerodown.dataplane.embedded import EmbeddedDataPlane
from zerodown.routing import parse_address

TOKEN_ENV = "ZERODOWN_TOKEN"


class Daemon:
    def __init__(self, config: Config, token: str | None = None) -> None:
        self.config = config
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        require_token_for(config.proxy.admin, self.token)
        self.dataplane: EmbeddedDataPlane | None = None
        self.admin: AdminServer | None = None

    async def start(self) -> None:
        self.dataplane = EmbeddedDataPlane(
            self.config.proxy_settings(), self.config.routing_table()
        )
        await self.dataplane.start(list(self.config.proxy.listen))
        host, port = (
            parse_address(self.config.proxy.admin)
            if not self.config.proxy.admin.endswith(":0")
            else (self.config.proxy.admin[:-2], 0)
        )
        self.admin = AdminServer(create_admin_app(self.dataplane, self.token), host, port)
        await self.admin.start()

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
        if self.dataplane is not None:
            await self.dataplane.stop()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        self.announce()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def announce(self) -> None:
        assert self.dataplane is not None and self.admin is not None
        listen = ", ".join(f"{h}:{p}" for h, p in self.dataplane.addresses)
        print(
            f"zerodown: proxy on {listen}; admin on {self.admin.host}:{self.admin.port}", flush=True
        )
