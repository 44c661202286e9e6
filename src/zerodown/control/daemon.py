"""`zerodown serve`: the control daemon, and the data plane it keeps serving.

The data plane runs in a process of its own (dataplane/host.py), which
outlives this one: if the daemon dies, traffic goes on by the last table,
with health checks and drains, and the next daemon adopts it, as it adopts
the app instances (static stability).

Shutdown runs in a fixed order (as uvicorn's does): the admin API stops;
the proxy stops accepting, answers keep-alive clients with Connection:
close, waits for in-flight requests up to its deadline and cuts the rest;
then the orchestrator stops deploying and, unless told to keep them, stops
the app instances (after the proxy, so in-flight requests finish on them).
Told to keep the instances, it leaves the data plane serving too.

SIGUSR2 is a hot restart (handover.py): a new generation of the daemon
takes the admin socket over and adopts the data plane (replacing it by one
running the new code, socket for socket, when zerodown was upgraded); this
one then stops, leaving the data plane and the app instances to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from zerodown.config import Config
from zerodown.config.service import ServiceConfig
from zerodown.control import notify
from zerodown.control.admin import create_admin_app
from zerodown.control.auth import require_token_for
from zerodown.control.dataplanes import check_certificates, managed_dataplane
from zerodown.control.handover import HandoverError, inherited, start_successor
from zerodown.control.server import AdminServer
from zerodown.control.upkeep import Upkeep
from zerodown.control.wire import TOKEN_ENV
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.errors import ZerodownError
from zerodown.routing import parse_address
from zerodown.runtime.base import Runtime
from zerodown.runtime.process import ProcessRuntime
from zerodown.store.sqlite import DB_FILENAME, SqliteStore
from zerodown.store.statedir import StateDirLock

log = logging.getLogger("zerodown.daemon")


class Daemon:
    def __init__(
        self,
        config: Config,
        token: str | None = None,
        *,
        keep_instances: bool = False,
        restart_argv: list[str] | None = None,
    ) -> None:
        self.config = config
        # The `zerodown` arguments a hot restart runs the new generation with
        # (None: hot restart is off, as in tests that build a Daemon directly).
        self.restart_argv = restart_argv
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        require_token_for(config.proxy.admin, self.token)
        # On a clean stop, leave the apps running for the next daemon to adopt
        # (an upgrade of zerodown itself), or stop them (a foreground session).
        self.keep_instances = keep_instances
        self.state_dir = Path(config.proxy.state_dir)
        self.state_lock: StateDirLock | None = None
        self.dataplane: ManagedDataPlane | None = None
        self.store: SqliteStore | None = None
        self.orchestrator: Orchestrator | None = None
        self.upkeep: Upkeep | None = None
        self.admin: AdminServer | None = None
        self.handed_over_to: int | None = None
        self._reloads: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        config = self.config
        given = inherited()
        # First of all: a second daemon on this state_dir must leave before it
        # binds anything or touches an instance (StateDirBusy).
        if given is not None and given.state_lock_fd is not None:
            self.state_lock = StateDirLock.inherit(given.state_lock_fd, self.state_dir)
        else:
            self.state_lock = StateDirLock.acquire(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        check_certificates(config)  # before anything listens: a bad one names its key
        self.dataplane = managed_dataplane(config, self.state_dir)
        # Sockets handed over by an older generation that served in-process
        # count only if no data plane runs to adopt.
        handed = given.listen if given and config.proxy.dataplane == "embedded" else None
        await self.dataplane.start(handed or config.listen_addresses())
        if config.proxy.tls is not None and getattr(self.dataplane, "adopted", False):
            await self.dataplane.reload_tls()  # a hot restart reads the certificates again
        self.store = SqliteStore(self.state_dir / DB_FILENAME)
        self.orchestrator = Orchestrator(config, self.dataplane, self.store, self._runtime_for)
        await self.orchestrator.start()
        self.upkeep = Upkeep(config, self.store, self.orchestrator)  # event pruning, webhooks
        self.upkeep.start()
        host, port = _admin_address(config.proxy.admin)
        app = create_admin_app(self.dataplane, self.token, self.orchestrator)
        self.admin = AdminServer(app, host, port, sock=given.admin if given else None)
        await self.admin.start()
        # Main pid first, then the old generation may exit: systemd must not
        # see a moment where its main process is gone and no other named.
        notify.ready(successor=given is not None)
        if given is not None:
            given.signal_ready()

    def _runtime_for(self, name: str, service: ServiceConfig) -> Runtime:
        return ProcessRuntime(self.state_dir, port_range=service.ports)

    async def stop(self) -> None:
        if self.handed_over_to is None:
            notify.stopping()  # after a hand-over the service is not stopping
        if self.admin is not None:
            await self.admin.stop()
        if self.dataplane is not None:
            if self.handed_over_to is not None or self.keep_instances:
                await self.dataplane.detach()  # it serves on, for the next daemon to adopt
            else:
                await self.dataplane.stop()
        if self.orchestrator is not None:
            await self.orchestrator.close(stop_instances=not self.keep_instances)
        if self.upkeep is not None:
            await self.upkeep.stop()  # after the orchestrator: its last events are sent
        if self.store is not None:
            self.store.close()
        if self.state_lock is not None:
            self.state_lock.close()  # last: the next daemon may take over the instances now

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, or until a hot restart took over; then stop."""
        stop = asyncio.Event()
        restart = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR2, restart.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        try:
            # A signal during start-up (many workers, a slow adoption) stops it
            # there: start() is cancelled and stop() below undoes what it did.
            if not await _unless(stop, self.start()):
                return
            self.announce()
            while not stop.is_set():
                await _first(stop, restart)
                if restart.is_set():
                    restart.clear()
                    if await self.hand_over():
                        break
        finally:
            await self.stop()

    async def hand_over(self) -> bool:
        """Start the next generation on our sockets; True when it serves.

        Refused while a deploy runs (the new generation would find it
        half-done and roll it back). The admin API pauses meanwhile so that
        no deploy starts here; if the new generation fails, it serves again.
        """
        assert self.dataplane is not None
        assert self.admin is not None
        assert self.orchestrator is not None
        if self.restart_argv is None:
            log.warning("hot restart: not available in this process")
            return False
        if self.orchestrator.deployments:
            busy = ", ".join(self.orchestrator.deployments)
            log.warning("hot restart refused: a deploy of %s is running", busy)
            return False
        await self.admin.pause()
        # Let go of the data plane first: the new generation adopts it (or
        # replaces it, stopping this one), and we must not start it again then.
        await self.dataplane.detach()
        try:
            lock = self.state_lock.fd if self.state_lock is not None else None
            # No proxy sockets: the new generation adopts the data plane, which has them.
            pid = await start_successor(self.restart_argv, [], self.admin.socket, lock)
        except HandoverError as exc:
            log.error("hot restart failed, serving on: %s", exc)
            await self.dataplane.start(self.config.listen_addresses())  # adopt it again
            await self.admin.start()
            return False
        print(f"zerodown: handed over to pid {pid}; finishing in-flight requests", flush=True)
        self.handed_over_to = pid
        self.keep_instances = True  # they are the new generation's now
        return True

    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload_tls())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_tls(self) -> bool:
        """SIGHUP: the data plane reads the certificates again; new connections
        get them, open ones are kept. A bad file is logged; the old ones serve on."""
        if self.config.proxy.tls is None or self.dataplane is None:
            return False
        try:
            check_certificates(self.config)
            await self.dataplane.reload_tls()
        except ZerodownError as exc:
            log.error("TLS certificates not reloaded, the old ones serve on: %s", exc)
            return False
        print("zerodown: TLS certificates reloaded", flush=True)  # as `announce` says it serves
        return True

    def announce(self) -> None:
        assert self.dataplane is not None
        assert self.admin is not None
        listen = ", ".join(f"{h}:{p}" for h, p in self.dataplane.addresses)
        admin = f"{self.admin.host}:{self.admin.port}"
        print(f"zerodown: proxy on {listen}; admin on {admin}", flush=True)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` to its end, or cancel it once `stop` is set; True if it ended.

    An error of `work` is raised. The cancelled work has finished its own
    clean-up when this returns, so what runs next sees no half-done step.
    """
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return False
    task.result()
    return True


def _admin_address(address: str) -> tuple[str, int]:
    if address.endswith(":0"):  # port 0: any free port (tests, demo)
        return address[:-2], 0
    return parse_address(address)
