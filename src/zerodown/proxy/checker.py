"""The active health checker: the I/O shell around TargetHealth.

One HealthChecker per target. Every `interval` it opens a fresh TCP
connection, sends `GET spec.path` with `Connection: close`, reads up to the
end of the response headers and reports a CheckResult to `on_result`:
"pass", "fail" (refused, reset, not HTTP, an unexpected status) or "timeout"
(no answer within `timeout`: dead, or only busy -- health.py tells which from
the real traffic). It decides nothing: the caller feeds the result to
`TargetHealth.on_check(ok, now, timed_out=...)`
("health checks report, targets decide", as in kamal-proxy). It needs no
`tick` hook either: with active checks configured, an ejected target returns
on a passing check, so `on_check` is the only input the state machine needs.

A fresh connection per check (never a pooled one) so a check proves the
target still accepts connections, which is what a real request needs first.
A spec without a path (a tcp service's) checks only that: the connect passes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Final, Literal

import httptools

from zerodown.routing import HealthSpec

log = logging.getLogger(__name__)

CheckResult = Literal["pass", "fail", "timeout"]

# Random extra delay per round, as a share of the interval: checkers started
# together (a whole pool on table apply) drift apart instead of hitting every
# target, and the proxy's own event loop, in the same millisecond forever.
JITTER: Final = 0.1
READ_CHUNK: Final = 4096
USER_AGENT: Final = "zerodown-health"
CONNECTED: Final = 200  # what a passing connect check counts as


class HealthChecker:
    """Checks one target every `spec.interval` until stopped. Never raises from its task."""

    def __init__(
        self,
        host: str,
        port: int,
        spec: HealthSpec,
        on_result: Callable[[CheckResult], None],
        host_header: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.spec = spec
        self.on_result = on_result
        self.last_error: str | None = None  # why the last check failed; None after a pass
        self._clock = clock
        self._request = (
            None
            if spec.path is None
            else _build_request(spec.path, host_header or _authority(host, port))
        )
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        running = self._task is not None and not self._task.done()
        return (
            f"<HealthChecker {_authority(self.host, self.port)}{self.spec.path or ''} "
            f"running={running}>"
        )

    def start(self) -> None:
        """Start checking in the running loop; the first check runs at once. Idempotent."""
        if self._task is not None and not self._task.done():
            return
        name = f"health-check {_authority(self.host, self.port)}"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end (an in-flight check is abandoned)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than `await task`: it neither re-raises the task's
        # CancelledError nor swallows a cancellation aimed at our caller.
        await asyncio.wait([task])

    async def check_once(self) -> bool:
        """One check; True when the status is expected. Any error or timeout is False."""
        return await self.probe() == "pass"

    async def probe(self) -> CheckResult:
        """One check, saying how it failed: a timeout is not a refusal."""
        try:
            async with asyncio.timeout(self.spec.timeout):
                status = await self._fetch_status()
        except TimeoutError:
            return self._fail(f"no response within {self.spec.timeout}s", "timeout")
        except Exception as exc:  # noqa: BLE001 - a check turns every failure into "not ok"
            return self._fail(f"{type(exc).__name__}: {exc}")
        if self._request is not None and not _expected(status, self.spec.expect_status):
            return self._fail(f"status {status}")
        self.last_error = None
        return "pass"

    async def _run(self) -> None:
        while True:
            started = self._clock()
            self._report(await self.probe())
            await asyncio.sleep(self._delay(started))

    def _delay(self, started: float) -> float:
        # Count the interval from the start of the last check, so a slow
        # target is not checked less often than a fast one.
        elapsed = self._clock() - started
        jitter = random.uniform(0.0, JITTER * self.spec.interval)
        return max(0.0, self.spec.interval - elapsed) + jitter

    def _report(self, result: CheckResult) -> None:
        try:
            self.on_result(result)
        except Exception:  # a broken callback must not end the checking
            log.exception("health result callback failed for %s", self)

    def _fail(self, reason: str, result: CheckResult = "fail") -> CheckResult:
        if reason != self.last_error:
            log.debug("health check %s failed: %s", self, reason)
        self.last_error = reason
        return result

    async def _fetch_status(self) -> int:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            if self._request is None:
                return CONNECTED  # a connect check: accepting is all it asks
            writer.write(self._request)
            await writer.drain()
            return await _read_status(reader)
        finally:
            # Reset rather than close: like HAProxy's checks, this leaves no
            # TIME_WAIT socket behind on the proxy host for every check of
            # every target, and we want nothing more from the connection.
            writer.transport.abort()


class _HeadersDone:
    """httptools callback target: notes when the status line and headers are in."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


async def _read_status(reader: asyncio.StreamReader) -> int:
    """Read up to the end of the response headers; return the status code."""
    probe = _HeadersDone()
    parser = httptools.HttpResponseParser(probe)
    while not probe.done:
        data = await reader.read(READ_CHUNK)
        if not data:
            raise ConnectionError("connection closed before the response headers ended")
        parser.feed_data(data)  # raises HttpParserError on a response that is not HTTP/1.x
    status: int = parser.get_status_code()
    return status


def _expected(status: int, expect: tuple[int, ...]) -> bool:
    # An empty list means "any success": 2xx, or 3xx as a redirect to a login
    # page still proves the app is up (nginx and HAProxy count 3xx as passing).
    return status in expect if expect else 200 <= status < 400


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _build_request(path: str, host_header: str) -> bytes:
    # The path and Host come from config; a space or CR/LF in them would make
    # a different request (or a second one) on the wire, so refuse them here.
    if not path.startswith("/") or not _is_token_text(path):
        raise ValueError(f"health check path {path!r} is not an origin-form request target")
    if not _is_token_text(host_header):
        raise ValueError(f"health check Host header {host_header!r} is not valid")
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def _is_token_text(value: str) -> bool:
    """Printable ASCII with no spaces: safe to put on a request line or in Host."""
    return bool(value) and all("!" <= ch <= "~" for ch in value)
