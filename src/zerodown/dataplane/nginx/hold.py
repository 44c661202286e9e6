"""Recreate's hold on nginx: requests that arrive while no target serves are
handed to the driver, which holds them until the new release is routed
and then pipes each one to it.

Open-source nginx cannot hold a request itself: it has no queue for an
upstream with no live server (that is NGINX Plus's `queue`), and a request
stays in the worker that took it, with that worker's configuration, for its
whole life. A retry loop inside nginx (backup servers, `error_page` to a
named location, `proxy_next_upstream`) can only ever reach the upstreams
of the configuration that was live when the request came in, which in the
gap are none; and the reload that routes the new release starts new
workers that never see it. So the request must go somewhere whose answer
does not depend on the configuration it was accepted under: while a
service holds with nothing to route to, its upstream is one unix socket,
`hold-<service>.sock` under state_dir, that the driver listens on.

Each connection nginx makes there waits until the driver applies a table
in which the service has a ready target (`update`), then is piped, bytes
both ways, to one of them: nginx's request and the app's response go
through unchanged. Past the hold timeout it gets a 503 that says so, as
the embedded proxy's (X-Zerodown-Error: hold_timeout). The upstream keeps
no idle connections (no `keepalive`), so each held request is one
connection and the pipe ends with it.

The hold lives in the controller: a daemon that dies mid-gap takes the
held connections with it (nginx answers 502 for them), as it takes the
deploy; the next daemon's restore routes the release again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
from pathlib import Path
from typing import Final

from zerodown.dataplane.shortpath import socket_dir
from zerodown.errors import DataPlaneError
from zerodown.routing import RoutingTable, ServiceSpec, parse_address

__all__ = ["HoldServers", "holds", "socket_path"]

log = logging.getLogger(__name__)

PIPE_CHUNK: Final = 65536
_NAME_BAD: Final = re.compile(r"[^A-Za-z0-9_.-]")


def socket_path(state_dir: Path, service: str) -> Path:
    name = f"hold-{_NAME_BAD.sub('_', service)}.sock"
    return socket_dir(state_dir, name) / name  # a deep state_dir: a short one (shortpath.py)


def holds(spec: ServiceSpec) -> bool:
    """The service asks for a hold and nothing can take its requests now."""
    return spec.hold is not None and not ready_targets(spec)


def ready_targets(spec: ServiceSpec) -> list[str]:
    targets = (*spec.stable.targets, *spec.canary.targets)
    return [t.address for t in targets if t.state == "ready" and t.weight > 0]


class _Held:
    """One service's hold socket and what its connections wait for."""

    def __init__(self, server: asyncio.Server, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.targets: list[str] = []
        self.ready = asyncio.Event()
        self.turn = itertools.count()

    def pick(self) -> list[str]:
        """The targets to try, starting at the next in turn."""
        start = next(self.turn) % len(self.targets)
        return self.targets[start:] + self.targets[:start]


class HoldServers:
    """The hold sockets of every service that has a hold in the table."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._held: dict[str, _Held] = {}
        self._pipes: set[asyncio.Task[None]] = set()
        self.answered_late = 0  # held connections given the hold-timeout 503

    def __repr__(self) -> str:
        return f"<HoldServers {sorted(self._held)} pipes={len(self._pipes)}>"

    async def listen(self, table: RoutingTable) -> None:
        """Listen for every service of `table` that holds, before nginx is
        told to send there (a reload pointing at no listener would be 502s)."""
        for spec in table.services:
            if holds(spec) and spec.name not in self._held:
                assert spec.hold is not None
                path = socket_path(self.state_dir, spec.name)
                path.unlink(missing_ok=True)  # a dead driver's: nginx connects by path

                serve = functools.partial(self._serve, spec.name)
                try:
                    server = await asyncio.start_unix_server(serve, path=str(path))
                except OSError as e:  # a step that fails, said, not a crash
                    raise DataPlaneError(
                        f"cannot hold requests of {spec.name} at {path}: {e}"
                    ) from e
                self._held[spec.name] = _Held(server, spec.hold.timeout)

    def update(self, table: RoutingTable) -> None:
        """The table nginx now serves: release held connections to services
        that have ready targets; stop listening for services with no hold."""
        for name, held in list(self._held.items()):
            spec = table.service(name)
            if spec is None or spec.hold is None:
                held.server.close()  # held connections keep going; no new ones
                socket_path(self.state_dir, name).unlink(missing_ok=True)
                del self._held[name]
                held.targets = ready_targets(spec) if spec is not None else []
                held.ready.set()  # wake any waiter: it pipes or answers now
                continue
            held.timeout = spec.hold.timeout
            held.targets = ready_targets(spec)
            if held.targets:
                held.ready.set()
            else:
                held.ready.clear()

    async def close(self) -> None:
        for name, held in self._held.items():
            held.server.close()
            socket_path(self.state_dir, name).unlink(missing_ok=True)
        self._held.clear()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.wait(self._pipes)

    async def _serve(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await self._hold(name, reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("held request for %s ended: %r", name, exc)
        finally:
            self._pipes.discard(task)
            writer.close()

    async def _hold(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held = self._held.get(name)
        if held is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.ready.wait(), held.timeout)
        targets = held.pick() if held is not None and held.targets else []
        for address in targets:
            host, port = parse_address(address)
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                log.warning("held request for %s: %s refused (%r)", name, address, exc)
                continue
            await _pipe(reader, writer, up_reader, up_writer)
            return
        self.answered_late += 1
        timeout = held.timeout if held is not None else 0.0
        writer.write(_timeout_answer(name, timeout))
        await writer.drain()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Bytes both ways until both sides are done."""
    try:
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
    finally:
        up_writer.close()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(PIPE_CHUNK):
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        with contextlib.suppress(OSError):
            sink.write_eof()


def _timeout_answer(name: str, timeout: float) -> bytes:
    body = (
        f"503 Service Unavailable: no target for {name} within the hold timeout ({timeout:g}s)\n"
    ).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nX-Zerodown-Error: hold_timeout\r\nConnection: close\r\n\r\n"
        % len(body)
    ) + body
