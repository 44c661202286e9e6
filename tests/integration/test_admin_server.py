"""AdminServer's lifecycle, as the daemon and a hot restart use it.

AdminServer drives uvicorn itself (control/server.py) rather than calling
`Server.serve()`: these tests pin what that must keep. The daemon's signal
handlers stay the daemon's; a paused server keeps its port, so a client
that connects meanwhile is answered once it serves again; a socket handed
over by an old generation is served as it is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from harness import DEADLINE, run
from integration.test_admin_deploy import FakeControl, make_app
from zerodown.control.server import AdminServer, bind

HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def health(port: int) -> bytes:
    """The raw answer to GET /v1/health."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEALTH)
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()


def test_the_daemons_signal_handlers_stay_its_own_while_the_api_serves() -> None:
    # uvicorn's serve() would take SIGTERM with signal.signal and raise it again
    # at its exit; the daemon's loop handler must see it, and only it.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        got = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, got.set)
        server = AdminServer(make_app(FakeControl()), "127.0.0.1", 0)
        try:
            await server.start()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(got.wait(), DEADLINE)
            assert (await health(server.port)).startswith(b"HTTP/1.1 200 ")
            await server.stop()
            got.clear()
            os.kill(os.getpid(), signal.SIGTERM)  # nothing raised again at the stop
            await asyncio.wait_for(got.wait(), DEADLINE)
        finally:
            await server.stop()
            assert loop.remove_signal_handler(signal.SIGTERM)

    run(scenario())


def test_a_client_that_connects_during_a_pause_is_answered_when_it_serves_again() -> None:
    # A hot restart pauses the old generation's API; if the new one fails, the
    # old one serves again. Nobody is refused meanwhile: they wait in the queue.
    async def scenario() -> None:
        server = AdminServer(make_app(FakeControl()), "127.0.0.1", 0)
        await server.start()
        port = server.port
        await server.pause()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEALTH)
            with pytest.raises(TimeoutError):  # queued, unanswered
                await asyncio.wait_for(reader.read(1), 0.2)
            await server.start()
            assert server.port == port
            answer = await asyncio.wait_for(reader.read(), DEADLINE)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b'"ok":true' in answer
        finally:
            await server.stop()

    run(scenario())


def test_a_handed_over_socket_is_served_as_it_is_and_closed_at_the_stop() -> None:
    async def scenario() -> None:
        given = bind("127.0.0.1", 0)
        port = given.getsockname()[1]
        server = AdminServer(make_app(FakeControl()), "127.0.0.1", 0, sock=given)
        await server.start()
        try:
            assert server.socket is given
            assert server.port == port
            assert (await health(port)).startswith(b"HTTP/1.1 200 ")
            await server.pause()
            assert given.fileno() != -1  # still listening, for the next generation
            await server.start()
            assert (await health(port)).startswith(b"HTTP/1.1 200 ")
        finally:
            await server.stop()
        assert given.fileno() == -1
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # refused: nobody listens

    run(scenario())
