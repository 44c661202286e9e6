"""Graceful stop through real sockets (issue 2, point 13).

`ProxyServer.stop(timeout)`: stop accepting, close idle keep-alive clients,
answer busy ones with `Connection: close`, wait for in-flight requests up to
the deadline, then cut what is left. And the real thing: `zerodown serve`
stopped by SIGTERM while a request is in flight exits 0 after answering it.
Backends hold requests on an Event, so "in flight at stop time" is a fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from harness import (
    DEADLINE,
    Backend,
    KeepAliveClient,
    Request,
    ok,
    parse_responses,
    read_response,
    request,
    run,
    service,
    until,
)
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable


@contextlib.asynccontextmanager
async def held_backend() -> AsyncIterator[tuple[Backend, asyncio.Event]]:
    """A backend that holds /slow requests until the event is set; others at once."""
    gate = asyncio.Event()

    async def handle(req: Request) -> bytes:
        if req.path.startswith("/slow"):
            await gate.wait()
        return ok(b"done")

    backend = await Backend(name="b", handler=handle).start()
    try:
        yield backend, gate
    finally:
        gate.set()
        await backend.stop()


async def started_proxy(backend: Backend) -> tuple[ProxyServer, int]:
    """A ProxyServer the test stops itself (the harness's `proxy()` would stop it again)."""
    server = ProxyServer(ProxySettings(), RoutingTable(services=(service(backend.address),)))
    await server.start(["127.0.0.1:0"])
    return server, server.addresses[0][1]


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes (or resets) the connection."""
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(DEADLINE):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def test_stop_lets_a_request_in_flight_finish_with_200() -> None:
    async def main() -> None:
        async with held_backend() as (backend, gate):
            server, port = await started_proxy(backend)
            slow = asyncio.create_task(request(port, path="/slow"))
            await until(lambda: len(backend.requests) == 1, "request at backend")
            stop = asyncio.create_task(server.stop(timeout=5.0))
            await until(lambda: server.stopping, "stop begun")
            assert not stop.done()
            gate.set()
            response = await slow
            assert (response.status, response.body) == (200, b"done")
            await stop
            assert server.connections == set()

    run(main())


def test_stop_closes_an_idle_keep_alive_client_at_once() -> None:
    async def main() -> None:
        async with held_backend() as (backend, _):
            server, port = await started_proxy(backend)
            async with KeepAliveClient(port) as client:
                response = await client.request()
                assert response.status == 200
                assert (response.header("connection") or "").lower() != "close"
                await server.stop(timeout=5.0)
                assert client.reader is not None
                assert await read_all(client.reader) == b""

    run(main())


def test_stop_answers_a_busy_keep_alive_client_with_connection_close() -> None:
    async def main() -> None:
        async with held_backend() as (backend, gate):
            server, port = await started_proxy(backend)
            async with KeepAliveClient(port) as client:
                assert (await client.request()).status == 200
                assert client.writer is not None
                assert client.reader is not None
                client.writer.write(b"GET /slow HTTP/1.1\r\nHost: example.test\r\n\r\n")
                await until(lambda: len(backend.requests) == 2, "second request at backend")
                stop = asyncio.create_task(server.stop(timeout=5.0))
                await until(lambda: server.stopping, "stop begun")
                gate.set()
                response = await read_response(client.reader)
                assert (response.status, response.body) == (200, b"done")
                assert (response.header("connection") or "").lower() == "close"
                assert await read_all(client.reader) == b""
                await stop

    run(main())


def test_new_connections_are_refused_once_stop_has_begun() -> None:
    async def main() -> None:
        async with held_backend() as (backend, gate):
            server, port = await started_proxy(backend)
            slow = asyncio.create_task(request(port, path="/slow"))
            await until(lambda: len(backend.requests) == 1, "request at backend")
            stop = asyncio.create_task(server.stop(timeout=5.0))
            await until(lambda: server.stopping, "stop begun")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            assert len(backend.requests) == 1
            gate.set()
            assert (await slow).status == 200
            await stop

    run(main())


def test_stop_past_its_deadline_cuts_the_request_and_returns() -> None:
    async def main() -> None:
        async with held_backend() as (backend, gate):
            server, port = await started_proxy(backend)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: example.test\r\n\r\n")
            await until(lambda: len(backend.requests) == 1, "request at backend")
            # The backend never answers before the gate opens (at the end of the
            # test), so stop() returning at all means it gave up at its deadline.
            await server.stop(timeout=0.1)
            assert not gate.is_set()
            data = await read_all(reader)
            writer.close()
            assert [r.status for r in parse_responses(data)] in ([], [503], [504])
            assert server.connections == set()

    run(main())


# -- the real process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HeldUpstream:
    """A threaded HTTP upstream that holds each request until `release` is set."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.received.set()
                outer.release.wait(DEADLINE)
                body = b"finished"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HeldUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"zerodown serve exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        time.sleep(0.01)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[[int], tuple[subprocess.Popen[bytes], int]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
        listen, admin = free_port(), free_port()
        config, log = tmp_path / "zerodown.toml", tmp_path / "serve.log"
        config.write_text(
            f'[proxy]\nlisten = ["127.0.0.1:{listen}"]\nadmin = "127.0.0.1:{admin}"\n'
            f'state_dir = "{tmp_path / "state"}"\n\n'
            '[services.web]\nroute = { host = "*", path = "/" }\n'
            f'upstreams = ["127.0.0.1:{upstream_port}"]\n'
        )
        # stderr to a file, not a pipe: a chatty process never blocks on it.
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        procs.append(proc)
        wait_for_port(listen, proc, log)
        return proc, listen

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_zerodown_serve_answers_the_request_in_flight_on_sigterm_and_exits_0(
    serve_process: Callable[[int], tuple[subprocess.Popen[bytes], int]],
) -> None:
    with HeldUpstream() as upstream:
        proc, port = serve_process(upstream.port)
        result: dict[str, object] = {}

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
            try:
                conn.request("GET", "/slow")
                response = conn.getresponse()
                result["status"], result["body"] = response.status, response.read()
            finally:
                conn.close()

        thread = threading.Thread(target=client)
        thread.start()
        assert upstream.received.wait(DEADLINE), "the request never reached the upstream"
        proc.send_signal(signal.SIGTERM)
        # Stop has begun once the listener is gone; only then let the answer go.
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
            except OSError:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the proxy kept accepting after SIGTERM")
        assert proc.poll() is None, "exited before its request in flight was answered"
        upstream.release.set()
        thread.join(DEADLINE)
        assert result == {"status": 200, "body": b"finished"}
        assert proc.wait(DEADLINE) == 0
