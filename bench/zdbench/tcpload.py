"""The TCP row's load client and echo upstream (wrk speaks HTTP only).

    python -m zdbench.tcpload serve --port P
    python -m zdbench.tcpload round_trips|connections|bulk --port P[,P2...] --conns N --seconds S

`serve` echoes every byte it reads, at once (no line framing: the upstream
should cost as little as it can). The client prints one JSON line
(zdbench/tcpstats.py) when done:

- round_trips: N persistent connections, each sending 64 bytes and waiting
  for their echo before the next: round trips per second and their latency;
- connections: N loops, each connecting, sending 64 bytes, reading the echo
  and closing: completed connections per second and their whole time;
- bulk: N connections, each keeping 256 KiB in flight, sent in 64 KiB
  writes and echoed back: payload MB/s received back.

An echo missing after TIMEOUT_S is a timeout; a refused, reset or early
closed connection an error. The suite runs two of these processes at once,
as wrk runs two threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import cast

import uvloop

from zdbench.tcpstats import BULK, CONNECTIONS, KINDS, TcpLoad, bucket, to_line

MESSAGE = b"z" * 64
CHUNK = 64 * 1024
WINDOW = 4 * CHUNK  # bulk bytes in flight per connection
TIMEOUT_S = 2.0  # as wrk's default
HOST = "127.0.0.1"


class Counts:
    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.errors = 0
        self.timeouts = 0
        self.hist: dict[int, int] = {}

    def took(self, seconds: float) -> None:
        self.count += 1
        b = bucket(seconds * 1e6)
        self.hist[b] = self.hist.get(b, 0) + 1


class _Echoes(asyncio.Protocol):
    """Client side of one connection: 64-byte round trips until `stop_at`, or once."""

    def __init__(self, counts: Counts, stop_at: float, once: bool = False) -> None:
        self.counts, self.stop_at, self.once = counts, stop_at, once
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.got = 0
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.got = 0
        self.sent_at = time.perf_counter()
        self.transport.write(MESSAGE)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < len(MESSAGE):
            return
        now = time.perf_counter()
        if self.got > len(MESSAGE):  # more than was sent: not an echo
            self._finish(False)
            return
        self.counts.took(now - self.sent_at)
        if self.once or time.monotonic() >= self.stop_at:
            self._finish(True)
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False)

    def _finish(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)
        if self.transport is not None:
            self.transport.close()


class _Bulk(asyncio.Protocol):
    """Keeps WINDOW bytes in flight: each byte echoed back is sent again until `stop_at`."""

    PAYLOAD = bytes(range(256)) * (WINDOW // 256)

    def __init__(self, counts: Counts, stop_at: float) -> None:
        self.counts, self.stop_at = counts, stop_at
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.in_flight = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        for start in range(0, WINDOW, CHUNK):
            self.transport.write(self.PAYLOAD[start : start + CHUNK])
        self.in_flight = WINDOW

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.counts.bytes += n
        self.in_flight -= n
        if time.monotonic() < self.stop_at:
            assert self.transport is not None
            self.transport.write(self.PAYLOAD[:n])
            self.in_flight += n
        elif self.in_flight <= 0 and not self.done.done():
            self.done.set_result(True)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def _persistent(kind: str, ports: Sequence[int], conns: int, seconds: float) -> TcpLoad:
    """round_trips or bulk: open every connection, run until `seconds` have passed."""
    loop = asyncio.get_running_loop()
    counts = Counts()
    start = time.monotonic()
    stop_at = start + seconds
    protos: list[_Echoes | _Bulk] = []

    async def connect(port: int) -> None:
        proto: _Echoes | _Bulk = (_Bulk if kind == BULK else _Echoes)(counts, stop_at)
        try:
            await loop.create_connection(lambda: proto, HOST, port)
            protos.append(proto)
        except OSError:
            counts.errors += 1

    # All at once, as wrk opens its connections: none waits for the others to be open.
    await asyncio.gather(*(connect(ports[i % len(ports)]) for i in range(conns)))
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    await _settle(protos, counts)
    elapsed = time.monotonic() - start
    return _load(kind, conns, elapsed, counts)


async def _settle(protos: list[_Echoes | _Bulk], counts: Counts) -> None:
    """Wait for the round trips in flight; any still missing after TIMEOUT_S times out."""
    pending = [p.done for p in protos]
    if pending:
        await asyncio.wait(pending, timeout=TIMEOUT_S)
    for p in protos:
        if not p.done.done():
            counts.timeouts += 1
            if p.transport is not None:
                p.transport.abort()
        elif not p.done.result():
            counts.errors += 1


async def _connections(ports: Sequence[int], conns: int, seconds: float) -> TcpLoad:
    """`conns` loops of connect, one echo, close, until `seconds` have passed."""
    loop = asyncio.get_running_loop()
    counts = Counts()
    start = time.monotonic()
    stop_at = start + seconds

    async def one(port: int) -> None:
        begun = time.perf_counter()
        proto = _Echoes(Counts(), stop_at, once=True)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await loop.create_connection(lambda: proto, HOST, port)
                ok = await proto.done
        except TimeoutError:
            counts.timeouts += 1
            if proto.transport is not None:
                proto.transport.abort()
            return
        except OSError:
            counts.errors += 1
            return
        if ok:
            counts.took(time.perf_counter() - begun)
        else:
            counts.errors += 1

    async def loop_until_stop(port: int) -> None:
        while time.monotonic() < stop_at:
            await one(port)

    await asyncio.gather(*(loop_until_stop(ports[i % len(ports)]) for i in range(conns)))
    return _load(CONNECTIONS, conns, time.monotonic() - start, counts)


def _load(kind: str, conns: int, seconds: float, counts: Counts) -> TcpLoad:
    return TcpLoad(
        kind, conns, seconds, counts.count, counts.bytes, counts.errors, counts.timeouts,
        counts.hist,
    )  # fmt: skip


async def measure(kind: str, ports: Sequence[int], conns: int, seconds: float) -> TcpLoad:
    """One load; connection i goes to ports[i % len(ports)] (several: no proxy between)."""
    if kind == CONNECTIONS:
        return await _connections(ports, conns, seconds)
    return await _persistent(kind, ports, conns, seconds)


# -- the echo upstream ---------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        return False  # close once what was written is sent


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, HOST, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="zdbench.tcpload")
    parser.add_argument("kind", choices=("serve", *KINDS))
    parser.add_argument("--port", required=True, help="a port; the load: ports, comma-separated")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.kind == "serve":
            uvloop.run(serve(int(args.port)))
            return
        ports = [int(p) for p in args.port.split(",")]
        load = uvloop.run(measure(args.kind, ports, args.conns, args.seconds))
        print(to_line(load), flush=True)


if __name__ == "__main__":
    main()
