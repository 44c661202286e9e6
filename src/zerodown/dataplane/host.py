"""The data-plane host: the process that carries traffic, apart from the controller.

`python -m zerodown.dataplane.host` is started by `zerodown serve` in a
session of its own, with the listening sockets inherited and one end of a
control channel. It runs the embedded data plane (in this process, or as
the supervisor of N workers: local.py) and obeys the controller over that
channel (channel.py's JSON lines):

    start  {settings, workers, table, health}   serve, from these (once)
    hello                                        who it is, what it serves
    apply  {table}      drain {service, address, timeout}
    stats               health                   counters; the health verdicts
    stop   {timeout}                             stop accepting, finish, exit

Its lifetime is its own (static stability, as nginx's workers outlive
their master): when the controller dies, the host keeps serving the last
table, keeps its health checks and drains going, and waits. A controller
started later finds it by name (an abstract Unix socket derived from the
state directory, `control_name`) and adopts it: on connecting it is handed
the listening sockets (SCM_RIGHTS), so it holds them too, and the host
dying would not close them either.

Only a process of the same user may connect (SO_PEERCRED). The host exits
on `stop`, on SIGTERM (gracefully, as `stop`), or when no controller told
it to `start` within START_TIMEOUT of its birth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import struct
from pathlib import Path
from typing import Any, Final

import uvloop
from pydantic import BaseModel, ConfigDict, JsonValue

import zerodown
from zerodown.dataplane.base import ListeningDataPlane
from zerodown.dataplane.channel import Channel, Message
from zerodown.dataplane.local import local_dataplane
from zerodown.proxy.health import HealthShare
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable

log = logging.getLogger("zerodown.dataplane.host")

START_TIMEOUT: Final = 60.0  # a host no controller configured by then exits
BIND_RETRY: Final = 0.05  # while a predecessor still holds the control name
PID_FILE: Final = "dataplane.pid"
LOG_FILE: Final = "dataplane.log"
HEADER_LIMIT: Final = 64 * 1024  # the JSON that comes with the handed sockets
MAX_SOCKETS: Final = 253  # SCM_RIGHTS' per-message limit (SCM_MAX_FD)


def control_name(state_dir: Path) -> bytes:
    """The abstract socket name of the host serving `state_dir`.

    Abstract (Linux): no file to go stale when the host is SIGKILLed, no
    108-byte path limit; derived from the directory's real path, so one
    name per state_dir, as one controller per state_dir (its lock).
    """
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:32]
    return b"\0zerodown-dataplane-" + digest.encode()


def code_fingerprint() -> str:
    """Which zerodown code this process runs: a new one means a host upgrade.

    The version alone misses an edited checkout, so the package's files'
    sizes and modification times count too (cheap: stat only).
    """
    root = Path(zerodown.__file__).parent
    digest = hashlib.sha256(zerodown.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class Serving(BaseModel):
    """What a started host serves, as `hello` tells it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int
    pids: list[int]
    settings: dict[str, JsonValue]  # settings_document() of its ProxySettings
    table: RoutingTable
    addresses: list[tuple[str, int]]  # the listeners' bound (host, port)


class HostHello(BaseModel):
    """The host's answer to `hello`: who it is and, once started, what it serves.

    A controller that finds a host keeps it when the code (fingerprint),
    workers, settings and listeners are its own, else replaces it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pid: int
    fingerprint: str  # code_fingerprint(): a new one means a host upgrade
    serving: Serving | None = None  # None until `start`


def settings_document(settings: ProxySettings) -> dict[str, JsonValue]:
    """The settings as JSON has them (tuples become lists), so two compare equal."""
    document: dict[str, JsonValue] = json.loads(json.dumps(dataclasses.asdict(settings)))
    return document


def settings_from(document: dict[str, JsonValue]) -> ProxySettings:
    return ProxySettings.from_document(document)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


class DataPlaneHost:
    def __init__(self, state_dir: Path, listen: list[socket.socket]) -> None:
        self.state_dir = state_dir
        self.listen = listen
        self.dataplane: ListeningDataPlane | None = None
        self.workers = 1
        self.fingerprint = code_fingerprint()
        self.done = asyncio.Event()
        self._named: socket.socket | None = None
        self._channels: set[Channel] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def __repr__(self) -> str:
        return f"<DataPlaneHost pid={os.getpid()} {self.dataplane!r}>"

    async def run(self, control: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: self._spawn(self._stop(None)))
        for sig in (signal.SIGINT, signal.SIGHUP):  # the controller's terminal, not ours
            loop.add_signal_handler(sig, lambda: None)
        self._serve(await Channel.over(control, self._handle), first=True)
        loop.call_later(START_TIMEOUT, self._exit_if_never_started)
        await self.done.wait()
        for channel in list(self._channels):
            await channel.flush()

    # -- controllers -----------------------------------------------------------

    def _serve(self, channel: Channel, *, first: bool = False) -> None:
        self._channels.add(channel)

        async def serve() -> None:
            await channel.serve()
            self._channels.discard(channel)
            if not self._stopping and self.dataplane is not None:
                log.warning("controller gone; serving on with the table in force")

        self._spawn(serve())

    async def _accept_controllers(self) -> None:
        """Take controllers that find us by name; each is handed the listening sockets."""
        loop = asyncio.get_running_loop()
        named = self._named or await self._bind_name()
        while not self._stopping:
            try:
                conn, _ = await loop.sock_accept(named)
            except OSError:
                return  # closed: stopping
            if peer_uid(conn) != os.getuid():
                conn.close()  # only our own user may steer the traffic
                continue
            try:
                self._hand_sockets(conn)
            except OSError as exc:
                log.warning("a controller connected and left at once: %s", exc)
                conn.close()
                continue
            self._serve(await Channel.over(conn, self._handle))

    async def _bind_name(self) -> socket.socket:
        """Bind the control name; during an upgrade, once the predecessor let go of it."""
        # Polled: nothing tells us when the predecessor closes its socket.
        while (named := self._try_bind_name()) is None:  # noqa: ASYNC110
            await asyncio.sleep(BIND_RETRY)
        return named

    def _try_bind_name(self) -> socket.socket | None:
        named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        named.setblocking(False)
        try:
            named.bind(control_name(self.state_dir))
        except OSError:
            named.close()
            return None
        named.listen(16)
        self._named = named
        return named

    def _hand_sockets(self, conn: socket.socket) -> None:
        assert self.dataplane is not None
        sockets = self.dataplane.sockets[:MAX_SOCKETS]
        header = json.dumps({"pid": os.getpid(), "sockets": len(sockets)}).encode()
        conn.setblocking(True)
        conn.settimeout(5.0)
        try:
            socket.send_fds(conn, [header], [s.fileno() for s in sockets])
        finally:
            conn.setblocking(False)

    # -- requests --------------------------------------------------------------

    def _handle(self, op: str, message: Message) -> Any:
        if op == "start":
            return self._start(message)
        if op == "hello":
            return self._hello()
        if op == "stop":
            return self._stop(message.get("timeout"))
        dataplane = self._dataplane()
        if op == "apply":
            return dataplane.apply(RoutingTable.model_validate(message["table"]))
        if op == "drain":
            return self._drain(message["service"], message["address"], message["timeout"])
        if op == "stats":
            return _stats_document(dataplane)
        if op == "health":
            return health_snapshot(_server_of(dataplane))
        if op == "reload_tls":
            return dataplane.reload_tls()
        raise ValueError(f"unknown op {op!r}")

    async def _start(self, message: Message) -> dict[str, Any]:
        if self.dataplane is not None:
            raise RuntimeError("the data plane is already serving")
        settings = settings_from(message["settings"])
        table = RoutingTable.model_validate(message["table"])
        self.workers = int(message["workers"])
        dataplane = local_dataplane(settings, table, self.workers)
        server = _server_of(dataplane)
        for service, address, share in message.get("health") or []:
            server.adopt_health(service, address, HealthShare(*share))
        await dataplane.start(self.listen)
        self.dataplane = dataplane
        self._write_pid()
        # Bound before the reply when the name is free, so a controller that
        # looks right after this one let go finds us; else (an upgrade, the
        # predecessor still has it) as soon as it is.
        self._try_bind_name()
        self._spawn(self._accept_controllers())
        return self._hello()

    def _hello(self) -> dict[str, Any]:
        dataplane = self.dataplane
        if dataplane is None:
            hello = HostHello(pid=os.getpid(), fingerprint=self.fingerprint)
        else:
            hello = HostHello(
                pid=os.getpid(),
                fingerprint=self.fingerprint,
                serving=Serving(
                    workers=self.workers,
                    pids=dataplane.pids,
                    settings=settings_document(_server_of(dataplane).settings),
                    table=dataplane.routing(),
                    addresses=dataplane.addresses,
                ),
            )
        return hello.model_dump(mode="json")

    async def _drain(self, service: str, address: str, timeout: float) -> dict[str, Any]:
        result = await self._dataplane().drain(service, address, timeout)
        return dataclasses.asdict(result)

    async def _stop(self, timeout: float | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._named is not None:
            self._named.close()  # first: a successor may take the name at once
        if self.dataplane is not None:
            await self.dataplane.stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            pid_file = self.state_dir / PID_FILE
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        # The reply to `stop` is written as this returns; run() flushes it.
        asyncio.get_running_loop().call_soon(self.done.set)

    # -- internals -------------------------------------------------------------

    def _dataplane(self) -> ListeningDataPlane:
        if self.dataplane is None:
            raise RuntimeError("the data plane has not been started")
        return self.dataplane

    def _write_pid(self) -> None:
        path = self.state_dir / PID_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(f"{os.getpid()}\n")
        temporary.replace(path)  # for people and scripts: which process carries the traffic

    def _exit_if_never_started(self) -> None:
        if self.dataplane is None and not self._stopping:
            log.error("no controller started this data plane within %ss; exiting", START_TIMEOUT)
            self._spawn(self._stop(0))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def health_snapshot(server: ProxyServer) -> list[tuple[str, str, list[Any]]]:
    """Every target's health verdict, to carry into a successor."""
    return [
        (service.name, target.address, list(target.health.shared()))
        for service in server.services.values()
        for target in service.targets()
    ]


async def _stats_document(dataplane: ListeningDataPlane) -> dict[str, Any]:
    """The stats as JSON for the channel; the controller validates them back (detached.py)."""
    return (await dataplane.stats()).model_dump(mode="json")


def _server_of(dataplane: ListeningDataPlane) -> ProxyServer:
    server = getattr(dataplane, "server", None)
    if not isinstance(server, ProxyServer):
        raise TypeError(f"{dataplane!r} has no ProxyServer")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(prog="zerodown-dataplane")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s dataplane[%(process)d] %(levelname)s %(message)s"
    )
    control = socket.socket(fileno=args.control_fd)
    listen = [socket.socket(fileno=fd) for fd in args.listen_fd]
    uvloop.run(DataPlaneHost(Path(args.state_dir), listen).run(control))


if __name__ == "__main__":
    main()
