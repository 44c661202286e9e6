"""`zerodown serve`: the data plane and the control daemon in one process.

Shutdown runs in a fixed order (as uvicorn's does): the admin API stops;
the proxy stops accepting, answers keep-alive clients with Connection:
close, waits for in-flight requests up to its deadline and cuts the rest;
then the orchestrator stops deploying and, unless told to keep them, stops
the app instances (after the proxy, so in-flight requests finish on them).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from zerodown.config import Config
from zerodown.config.service import ServiceConfig
from zerodown.control.admin import AdminServer, create_admin_app
from zerodown.control.auth import require_token_for
from zerodown.dataplane.embedded import EmbeddedDataPlane
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.routing import parse_address
from zerodown.runtime.base import Runtime
from zerodown.runtime.process import ProcessRuntime
from zerodown.store.sqlite import DB_FILENAME, SqliteStore

TOKEN_ENV = "ZERODOWN_TOKEN"


class Daemon:
    def __init__(
        self, config: Config, token: str | None = None, *, keep_instances: bool = False
    ) -> None:
        self.config = config
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        require_token_for(config.proxy.admin, self.token)
        # On a clean stop, leave the apps running for the next daemon to adopt
        # (an upgrade of zerodown itself), or stop them (a foreground session).
        self.keep_instances = keep_instances
        self.state_dir = Path(config.proxy.state_dir)
        self.dataplane: EmbeddedDataPlane | None = None
        self.store: SqliteStore | None = None
        self.orchestrator: Orchestrator | None = None
        self.admin: AdminServer | None = None

    async def start(self) -> None:
        config = self.config
        self.dataplane = EmbeddedDataPlane(config.proxy_settings(), config.routing_table())
        await self.dataplane.start(list(config.proxy.listen))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(self.state_dir / DB_FILENAME)
        self.orchestrator = Orchestrator(config, self.dataplane, self.store, self._runtime_for)
        await self.orchestrator.start()
        host, port = _admin_address(config.proxy.admin)
        app = create_admin_app(self.dataplane, self.token, self.orchestrator)
        self.admin = AdminServer(app, host, port)
        await self.admin.start()

    def _runtime_for(self, name: str, service: ServiceConfig) -> Runtime:
        return ProcessRuntime(self.state_dir, port_range=service.ports)

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
        if self.dataplane is not None:
            await self.dataplane.stop()
        if self.orchestrator is not None:
            await self.orchestrator.close(stop_instances=not self.keep_instances)
        if self.store is not None:
            self.store.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            self.announce()
            await stop.wait()
        finally:
            await self.stop()

    def announce(self) -> None:
        assert self.dataplane is not None and self.admin is not None
        listen = ", ".join(f"{h}:{p}" for h, p in self.dataplane.addresses)
        admin = f"{self.admin.host}:{self.admin.port}"
        print(f"zerodown: proxy on {listen}; admin on {admin}", flush=True)


def _admin_address(address: str) -> tuple[str, int]:
    if address.endswith(":0"):  # port 0: any free port (tests, demo)
        return address[:-2], 0
    return parse_address(address)
