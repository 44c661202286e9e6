"""The controller's side of the data-plane host (host.py): `zerodown serve`'s data plane.

`start` adopts the host already serving this state directory, if there is
one, or starts a new one. Adopting keeps every connection and the table in
force: the host never stopped. When the host runs other code (zerodown was
upgraded) or other settings, workers or listeners than this controller's
config, it is replaced by a successor that takes over its sockets, its
table and its health verdicts before it stops: an upgrade, with no socket
closed and no request refused.

The controller holds the listening sockets too (bound here, or handed over
by the host on adoption), so a host that dies does not close them: clients
wait in the accept queue while a new host starts on the table in force.

`stop` stops the host (a real stop of `zerodown serve`); `detach` leaves it
serving (a hot restart of the controller, or `--keep-instances`). A
controller that dies without either leaves it serving too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from zerodown.dataplane.base import DrainResult, ManagedDataPlane
from zerodown.dataplane.channel import Channel, ChannelClosed, RemoteError
from zerodown.dataplane.host import (
    HEADER_LIMIT,
    LOG_FILE,
    MAX_SOCKETS,
    HostHello,
    code_fingerprint,
    control_name,
    settings_document,
)
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.dataplane.sockets import ListenSet
from zerodown.errors import DataPlaneDown, DataPlaneError
from zerodown.proxy.listener import bind_listener
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable
from zerodown.stats import Stats

log = logging.getLogger("zerodown.dataplane")

START_TIMEOUT: Final = 30.0  # a new host must serve within this
REQUEST_TIMEOUT: Final = 10.0  # apply, stats, hello: answered at once by a live host
STOP_GRACE: Final = 5.0  # beyond the shutdown timeout, before the host is killed
RESTART_DELAY: Final = 0.2  # before a host that died is started again


class HostLink:
    """One connection to a host: its channel, its pid, and how to wait for its end."""

    def __init__(self, channel: Channel, pid: int, process: subprocess.Popen[bytes] | None):
        self.channel = channel
        self.pid = pid
        self.process = process  # set when the host is our child (we started it)
        self.reading: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<HostLink pid={self.pid} closed={self.channel.closed}>"

    async def request(self, op: str, wait: float = REQUEST_TIMEOUT, **fields: Any) -> Any:
        try:
            return await self.channel.request(op, wait, **fields)
        except RemoteError as exc:
            kind, _, text = str(exc).partition(": ")
            raise DataPlaneError(text if kind == "DataPlaneError" else str(exc)) from None
        except TimeoutError:
            # Typed, as every error of the channel is (ChannelClosed is a
            # DataPlaneDown): no traceback reaches a deploy.
            raise DataPlaneError(f"the data plane did not answer {op!r} within {wait}s") from None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_alive(self.pid)

    async def exited(self, timeout: float) -> bool:
        """Wait until the host process is gone; False at the timeout."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def kill(self) -> None:
        """SIGKILL the host and its workers: its session's process group is theirs."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def close(self) -> None:
        self.channel.close()


class DetachedDataPlane(ManagedDataPlane):
    def __init__(
        self,
        settings: ProxySettings,
        table: RoutingTable | None,
        workers: int,
        state_dir: Path,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.state_dir = state_dir
        self.table = table or RoutingTable()
        self.listening = ListenSet([], workers)
        self.host: HostLink | None = None
        self.adopted = False  # this start found a host serving and kept it
        self.fingerprint = code_fingerprint()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DetachedDataPlane {self.addresses} host={self.host!r}>"

    # -- starting: adopt, upgrade or start -----------------------------------------

    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        """Adopt the host serving our state directory, or start one (again after detach)."""
        self._stopping, self.host, self.adopted = False, None, False
        found = await self._connect_existing()
        if found is None:
            self.listening = _open(listen, self.workers)
            await self._start_host(self.table, [])
        else:
            link, sockets, hello = found
            await self._take_over(link, sockets, hello, listen)
        self._watch_host()

    async def _take_over(
        self,
        link: HostLink,
        sockets: list[socket.socket],
        hello: HostHello,
        listen: list[str] | list[socket.socket],
    ) -> None:
        """Keep the host that serves, or replace it by one that runs our code and config."""
        table = hello.serving.table if hello.serving is not None else RoutingTable()
        wanted = _open_missing(sockets, listen, self.workers)
        if self._same_host(hello, wanted):
            self.listening, self.host, self.table = wanted, link, table
            self.adopted = True
            log.info("adopted the data plane serving %s (pid %s)", self.state_dir, link.pid)
            return
        log.info("replacing the data plane (pid %s): other code, settings or listeners", link.pid)
        health = await link.request("health")
        self.listening = wanted
        await self._start_host(table, health)
        self.table = table
        await _stop_host(link, self.settings.shutdown_timeout)
        # Sockets of listeners no longer configured close with the old host's.
        kept = {s.fileno() for s in wanted.sockets}
        for sock in sockets:
            if sock.fileno() not in kept:
                sock.close()

    def _same_host(self, hello: HostHello, wanted: ListenSet) -> bool:
        serving = hello.serving
        return (
            serving is not None
            and hello.fingerprint == self.fingerprint
            and serving.workers == self.workers
            and serving.settings == settings_document(self.settings)
            and set(serving.addresses) == set(wanted.addresses)
        )

    async def _connect_existing(
        self,
    ) -> tuple[HostLink, list[socket.socket], HostHello] | None:
        """The host serving this state directory, with its sockets; None if there is none."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(control_name(self.state_dir))
            conn.settimeout(5.0)
            header_bytes, fds, _, _ = socket.recv_fds(conn, HEADER_LIMIT, MAX_SOCKETS)
        except OSError:
            conn.close()
            return None
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if not header_bytes:
            conn.close()
            return None
        header = json.loads(header_bytes)
        conn.setblocking(False)
        link = HostLink(await Channel.over(conn, _refuse), int(header["pid"]), None)
        self._read(link)
        return link, sockets, HostHello.model_validate(await link.request("hello"))

    async def _start_host(self, table: RoutingTable, health: list[Any]) -> None:
        """Start a host on our sockets with `table`; return once it serves."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [s.fileno() for s in self.listening.sockets]
        command = [sys.executable, "-m", "zerodown.dataplane.host"]
        command += ["--state-dir", str(self.state_dir), "--control-fd", str(theirs.fileno())]
        for fd in fds:
            command += ["--listen-fd", str(fd)]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / LOG_FILE).open("ab") as output:
            try:
                # Popen, not asyncio's subprocess: that one kills its child
                # when its transport closes, and the host must outlive us.
                process = subprocess.Popen(  # noqa: ASYNC220 - fork+exec only, no wait
                    command,
                    pass_fds=[theirs.fileno(), *fds],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # not in serve's group: Ctrl-C is serve's alone
                )
            finally:
                theirs.close()
        link = HostLink(await Channel.over(ours, _refuse), process.pid, process)
        self._read(link)
        try:
            await link.request(
                "start",
                START_TIMEOUT,
                settings=settings_document(self.settings),
                workers=self.workers,
                table=table.model_dump(mode="json"),
                health=health,
            )
        except BaseException:
            link.close()
            link.kill()
            raise
        self.host = link

    def _read(self, link: HostLink) -> None:
        link.reading = asyncio.get_running_loop().create_task(link.channel.serve())

    # -- a host that dies is started again --------------------------------------------

    def _watch_host(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._keep_host())

    async def _keep_host(self) -> None:
        while not self._stopping:
            link = self.host
            if link is None or link.reading is None:
                return
            await asyncio.wait([link.reading])
            if self._stopping or link is not self.host:
                continue
            await link.exited(STOP_GRACE)
            if link.process is not None:
                link.process.poll()  # reaped: no zombie
            log.error(
                "the data plane (pid %s) is gone; starting another on the table in force",
                link.pid,
            )
            await asyncio.sleep(RESTART_DELAY)
            try:
                await self._start_host(self.table, [])
            except (OSError, ChannelClosed, DataPlaneError, TimeoutError) as exc:
                log.error("the data plane did not start again: %s", exc)
                await asyncio.sleep(1.0)

    # -- stopping --------------------------------------------------------------------

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the host: the controller is really going away."""
        self._stopping = True
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        # Our copies first: when the host closes its own, the port closes, as
        # a stop should (held open by us, it would queue clients nobody serves).
        self.listening.close()
        if self.host is not None:
            await _stop_host(self.host, timeout)
        await self._end_watch()

    async def detach(self) -> None:
        """Leave the host serving (a hot restart, or instances kept for the next serve)."""
        self._stopping = True
        if self.host is not None:
            self.host.close()
        await self._end_watch()
        self.listening.close()  # our copies: the host holds its own

    async def _end_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    # -- the DataPlane interface -----------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.listening.addresses

    @property
    def sockets(self) -> list[socket.socket]:
        return self.listening.sockets

    @property
    def pids(self) -> list[int]:
        return [self.host.pid] if self.host is not None else []

    async def apply(self, table: RoutingTable) -> None:
        document = table.model_dump(mode="json")
        await self._link().request("apply", table=document)
        self.table = table

    def routing(self) -> RoutingTable:
        return self.table

    async def reload_tls(self) -> None:
        await self._link().request("reload_tls")

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        wait = timeout + STOP_GRACE
        result = await self._link().request(
            "drain", wait, service=service, address=address, timeout=timeout
        )
        return DrainResult(**result)

    async def stats(self) -> Stats:
        return Stats.model_validate(await self._link().request("stats"))

    async def prometheus(self) -> str:
        return render_prometheus(await self.stats())

    def _link(self) -> HostLink:
        if self.host is None or self.host.channel.closed:
            raise DataPlaneDown("the data plane is not running (it is being started again)")
        return self.host


async def _stop_host(link: HostLink, timeout: float) -> None:
    """Ask the host to stop gracefully; kill it if it does not exit in time."""
    with contextlib.suppress(ChannelClosed, DataPlaneError, TimeoutError):
        await link.request("stop", timeout + STOP_GRACE, timeout=timeout)
    if not await link.exited(STOP_GRACE):
        log.warning("the data plane (pid %s) did not exit; killing it", link.pid)
        link.kill()
    link.close()


def _open(listen: list[str] | list[socket.socket], workers: int) -> ListenSet:
    """Our listening sockets: one per address for one worker (no SO_REUSEPORT, so a
    second zerodown on a taken port fails loudly), a ListenSet for several."""
    if workers > 1 or all(isinstance(item, socket.socket) for item in listen):
        return ListenSet.open(listen, workers)
    return ListenSet([[bind_listener(str(address))] for address in listen], workers)


def _open_missing(
    held: list[socket.socket], listen: list[str] | list[socket.socket], workers: int
) -> ListenSet:
    """The host's sockets for the addresses we listen on, plus new ones for the rest."""
    if all(isinstance(item, socket.socket) for item in listen):
        return ListenSet.open(listen, workers)
    by_address: dict[tuple[str, int], list[socket.socket]] = {}
    for sock in held:
        by_address.setdefault(sock.getsockname()[:2], []).append(sock)
    groups = []
    for address in listen:
        host, _, port = str(address).rpartition(":")
        key = (host.strip("[]"), int(port))
        found = by_address.get(key)
        groups.append(found if found else [bind_listener(str(address), reuse_port=workers > 1)])
    listening = ListenSet(groups, workers)
    if workers > 1:
        listening = ListenSet.open(listening.sockets, workers)  # one per worker where it can
    return listening


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _refuse(op: str, message: dict[str, Any]) -> None:
    raise ValueError(f"the data plane may not ask the controller {op!r}")
