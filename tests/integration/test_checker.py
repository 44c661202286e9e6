"""HealthChecker against real tiny servers on 127.0.0.1, port 0.

Deadlines are tens of milliseconds; assertions count outcomes, never time.
Every test runs on both the stock asyncio loop and uvloop (the proxy's).
"""

# The tests read `health.state` after calls that change it; mypy keeps the
# narrowing from the previous comparison and calls the next one impossible.
# mypy: disable-error-code="comparison-overlap"

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import pytest
import uvloop

from harness import until
from zerodown.proxy.checker import CheckResult, HealthChecker
from zerodown.proxy.health import TargetHealth
from zerodown.routing import HealthSpec

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

FAST = HealthSpec(path="/health", interval=0.01, timeout=0.05, rise=1, fall=2)
SAFETY = 5.0  # only bounds a hung test; no assertion depends on it


class Run(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, T]) -> T: ...


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


# --- tiny servers ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """A server on 127.0.0.1:0 running `handler` per connection; yields its port."""
    connections: set[asyncio.Task[Any]] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        # The checker resets the connection when done; that is not a test failure.
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        # Python 3.11's wait_closed does not wait for open connections; do,
        # so no socket outlives the loop (a ResourceWarning under -W error).
        if connections:
            await asyncio.wait(connections, timeout=SAFETY)


def answer(status: int, seen: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(request)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()

    return handler


def raw(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        await writer.drain()

    return handler


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accept, read, never answer; ends when the checker gives up


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def check(port: int, spec: HealthSpec = FAST) -> tuple[bool, str | None]:
    checker = HealthChecker("127.0.0.1", port, spec, on_result=lambda result: None)
    ok = await checker.check_once()
    return ok, checker.last_error


async def probe(port: int, spec: HealthSpec = FAST) -> CheckResult:
    return await HealthChecker("127.0.0.1", port, spec, on_result=lambda result: None).probe()


async def check_status(status: int, spec: HealthSpec = FAST) -> bool:
    async with serve(answer(status)) as port:
        return (await check(port, spec))[0]


# --- check_once -------------------------------------------------------------------


def test_200_is_ok(run: Run) -> None:
    assert run(check_status(200)) is True


def test_500_is_not_ok(run: Run) -> None:
    assert run(check_status(500)) is False


def test_a_server_that_never_answers_fails_on_the_timeout(run: Run) -> None:
    async def go() -> tuple[bool, str | None]:
        async with serve(silent) as port:
            return await check(port)

    ok, error = run(go())
    assert ok is False
    assert error is not None
    assert "no response" in error


def test_a_closed_port_is_not_ok(run: Run) -> None:
    ok, error = run(check(closed_port()))
    assert ok is False
    assert error is not None
    assert "ConnectionRefusedError" in error


# A timeout may be a busy app (health.py excuses it while real responses
# arrive); a refusal, a reset, a bad status or garbage never is.
def test_probe_tells_a_timeout_from_a_refusal_a_reset_and_a_bad_status(run: Run) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async def go() -> list[CheckResult]:
        results = [await probe(closed_port())]
        for handler in (silent, reset, answer(500), raw(b"nonsense\r\n\r\n"), answer(200)):
            async with serve(handler) as port:
                results.append(await probe(port))
        return results

    assert run(go()) == ["fail", "timeout", "fail", "fail", "fail", "pass"]


@pytest.mark.parametrize(("status", "ok"), [(204, True), (200, False), (500, False)])
def test_expect_status_is_respected(run: Run, status: int, ok: bool) -> None:
    spec = FAST.model_copy(update={"expect_status": (204,)})
    assert run(check_status(status, spec)) is ok


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (404, False), (503, False)])
def test_empty_expect_status_means_2xx_or_3xx(run: Run, status: int, ok: bool) -> None:
    spec = FAST.model_copy(update={"expect_status": ()})
    assert run(check_status(status, spec)) is ok


@pytest.mark.parametrize(
    "data",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Le", b"hello there\r\n\r\n"],
    ids=["closed-at-once", "closed-mid-headers", "not-http"],
)
def test_a_broken_response_is_not_ok(run: Run, data: bytes) -> None:
    async def go() -> bool:
        async with serve(raw(data)) as port:
            return (await check(port))[0]

    assert run(go()) is False


def test_a_status_split_across_packets_is_read(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part in (b"HTTP/1.1 2", b"00 OK\r\nContent-", b"Length: 0\r\n\r\n"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0)

    async def go() -> bool:
        async with serve(handler) as port:
            return (await check(port))[0]

    assert run(go()) is True


def test_the_request_is_a_plain_get_with_connection_close(run: Run) -> None:
    seen: list[bytes] = []

    async def go() -> None:
        async with serve(answer(200, seen)) as port:
            spec = FAST.model_copy(update={"path": "/ready?deep=1"})
            checker = HealthChecker("127.0.0.1", port, spec, lambda ok: None, "app.test")
            assert await checker.check_once()

    run(go())
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET /ready?deep=1 HTTP/1.1"
    assert "Host: app.test" in lines
    assert "Connection: close" in lines


def test_default_host_header_is_the_target_address() -> None:
    checker = HealthChecker("::1", 9001, FAST, lambda ok: None)
    assert checker._request is not None
    assert b"\r\nHost: [::1]:9001\r\n" in checker._request


@pytest.mark.parametrize("path", ["health", "/a b", "/x\r\nEvil: 1", ""])
def test_a_path_that_would_change_the_request_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="request target"):
        HealthChecker("127.0.0.1", 1, FAST.model_copy(update={"path": path}), lambda ok: None)


# --- the loop ---------------------------------------------------------------------


async def collect(port: int, n: int, spec: HealthSpec = FAST) -> list[CheckResult]:
    """Run a checker until it has reported n results; return them."""
    results: list[CheckResult] = []
    enough = asyncio.Event()

    def on_result(result: CheckResult) -> None:
        results.append(result)
        if len(results) >= n:
            enough.set()

    checker = HealthChecker("127.0.0.1", port, spec, on_result)
    checker.start()
    try:
        async with asyncio.timeout(SAFETY):
            await enough.wait()
    finally:
        await checker.stop()
    return results


def test_the_loop_reports_every_round(run: Run) -> None:
    async def go() -> list[CheckResult]:
        async with serve(answer(200)) as port:
            return await collect(port, 3)

    assert run(go())[:3] == ["pass", "pass", "pass"]


def test_the_first_check_runs_at_once(run: Run) -> None:
    # An hour-long interval: a result can only come from the immediate first check.
    slow = FAST.model_copy(update={"interval": 3600.0})

    async def go() -> list[CheckResult]:
        async with serve(answer(200)) as port:
            return await collect(port, 1, slow)

    assert run(go()) == ["pass"]


def test_the_loop_survives_failures_and_a_raising_callback(run: Run) -> None:
    calls: list[CheckResult] = []

    def on_result(result: CheckResult) -> None:
        calls.append(result)
        raise RuntimeError("callback bug")

    async def go() -> None:
        checker = HealthChecker("127.0.0.1", closed_port(), FAST, on_result)
        checker.start()
        await until(lambda: len(calls) >= 3, "three checks", SAFETY, every=0.005)
        await checker.stop()

    run(go())
    assert calls[:3] == ["fail", "fail", "fail"]


def test_stop_ends_a_check_in_flight_and_nothing_is_reported_after(run: Run) -> None:
    results: list[CheckResult] = []
    patient = FAST.model_copy(update={"timeout": 3600.0})

    async def go() -> None:
        connected = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            await silent(reader, writer)

        async with serve(handler) as port:
            checker = HealthChecker("127.0.0.1", port, patient, results.append)
            checker.start()
            checker.start()  # idempotent: still one loop
            async with asyncio.timeout(SAFETY):
                await connected.wait()
                await checker.stop()
                await checker.stop()  # idempotent
            await asyncio.sleep(0.02)
            assert "running=False" in repr(checker)

    run(go())
    assert results == []


def test_checker_drives_target_health_down_and_up(run: Run) -> None:
    health = TargetHealth(active=FAST)
    states: list[str] = []

    def on_result(result: CheckResult) -> None:
        health.on_check(result == "pass", 0.0, timed_out=result == "timeout")
        if not states or states[-1] != health.state:
            states.append(health.state)

    async def go() -> None:
        async with serve(answer(503)) as port:
            checker = HealthChecker("127.0.0.1", port, FAST, on_result)
            checker.start()
            await until(lambda: health.state == "down", "down", SAFETY, every=0.005)
            await checker.stop()
        async with serve(answer(200)) as port:
            checker = HealthChecker("127.0.0.1", port, FAST, on_result)
            checker.start()
            await until(lambda: health.state == "up", "up", SAFETY, every=0.005)
            await checker.stop()

    run(go())
    assert states == ["up", "down", "up"]
