"""Helpers for bench/callgrind.sh: a backend, the proxy under test, a fixed-count client.

    python bench/callgrind_load.py backend PORT        # fixed 200 "ok\\n", keep-alive
    python bench/callgrind_load.py proxy PORT BACKEND  # ProxyServer, 1 process, no health checks
    python bench/callgrind_load.py client PORT N CONNS # N GETs over CONNS keep-alive connections

Only the proxy runs under valgrind; health checks are off so that the
instructions counted are the request path's, not timers'.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\n\r\n"


class _Backend(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # One response per request head (requests carry no body).
        self.transport.write(RESPONSE * data.count(b"\r\n\r\n"))  # type: ignore[attr-defined]


async def backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Backend, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


async def proxy(port: int, upstream: str) -> None:
    from zerodown.proxy.server import ProxyServer
    from zerodown.proxy.settings import ProxySettings
    from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

    spec = ServiceSpec(
        name="bench", stable=PoolSpec(targets=(TargetSpec(address=upstream),)), health=None
    )
    server = ProxyServer(ProxySettings(), RoutingTable(services=(spec,)))
    await server.start([f"127.0.0.1:{port}"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(timeout=1.0)


async def _one_connection(port: int, count: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    for _ in range(count):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        done += head.startswith(b"HTTP/1.1 200")
    writer.close()
    return done


async def client(port: int, total: int, conns: int) -> None:
    shares = [total // conns + (i < total % conns) for i in range(conns)]
    done = await asyncio.gather(*(_one_connection(port, n) for n in shares))
    print(sum(done))


def main(argv: list[str]) -> None:
    role, port = argv[0], int(argv[1])
    if role == "backend":
        uvloop.run(backend(port))
    elif role == "proxy":
        uvloop.run(proxy(port, argv[2]))
    else:
        uvloop.run(client(port, int(argv[2]), int(argv[3])))


if __name__ == "__main__":
    main(sys.argv[1:])
