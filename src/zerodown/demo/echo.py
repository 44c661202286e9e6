"""The demo TCP app: `python -m zerodown.demo.echo --port PORT --version V`.

It answers each line it reads with "<version> <line>", so a test (or a
person with `nc`) sees which release serves a connection, and when the
client half-closes it answers what is left and closes too. SIGTERM stops it
accepting and closes it at once: the proxy's drain, not the app, is what
keeps an open connection alive through a deploy.

`--reset-rate R` makes a bad release for the tcp canary's tests: a share R
of its connections is reset (RST) after their first line, unanswered: what
every data plane counts as a failed connection (docs/tcp.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import struct
from typing import Final

import uvloop

# SO_LINGER on, 0 s: close() sends an RST and drops what is unsent.
_RESET: Final = struct.pack("ii", 1, 0)


async def start(
    host: str, port: int, version: str, reset_rate: float = 0.0, rng: random.Random | None = None
) -> asyncio.Server:
    """Listen on host:port (0: any free port) and answer lines with `version`;
    reset a share `reset_rate` of the connections after their first line."""
    prefix = version.encode() + b" "
    rng = rng or random.Random()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if reset_rate and rng.random() < reset_rate:
                    _reset(writer)
                    return
                writer.write(prefix + line)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, host, port)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.transport.abort()


async def serve(host: str, port: int, version: str, reset_rate: float = 0.0) -> None:
    server = await start(host, port, version, reset_rate)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    server.close()  # not wait_closed(): that would wait for every client to leave


def main() -> None:
    parser = argparse.ArgumentParser(prog="zerodown-echo")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version", default="v1")
    parser.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        help="share of connections reset after their first line, unanswered (0-1)",
    )
    args = parser.parse_args()
    if not 0.0 <= args.reset_rate <= 1.0:
        parser.error(f"--reset-rate {args.reset_rate}: a share between 0 and 1")
    uvloop.run(serve(args.host, args.port, args.version, args.reset_rate))


if __name__ == "__main__":
    main()
