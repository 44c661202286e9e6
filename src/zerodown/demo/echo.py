"""The demo TCP app: `python -m zerodown.demo.echo --port PORT --version V`.

It answers each line it reads with "<version> <line>", so a test (or a
person with `nc`) sees which release serves a connection, and when the
client half-closes it answers what is left and closes too. SIGTERM stops it
accepting and closes it at once: the proxy's drain, not the app, is what
keeps an open connection alive through a deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import uvloop


async def start(host: str, port: int, version: str) -> asyncio.Server:
    """Listen on host:port (0: any free port) and answer lines with `version`."""
    prefix = version.encode() + b" "

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(prefix + line)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, host, port)


async def serve(host: str, port: int, version: str) -> None:
    server = await start(host, port, version)
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
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.version))


if __name__ == "__main__":
    main()
