"""Run the demo app under uvicorn: `python -m zerodown.demo --port P --version V`.

The app does not listen until `--startup-delay` has passed (as an app that
loads before it binds): a port that refuses connections is "not ready" to
any health check. `--port 0` picks a free port; either way one line goes to
stdout once the socket is listening, and it names the real port:

    demo v1 listening on 127.0.0.1:43121

SIGTERM or SIGINT stops it gracefully (uvicorn's order: stop accepting, let
in-flight requests finish, close idle keep-alive connections) and it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

import uvicorn

from zerodown.demo.app import DemoApp, DemoSettings
from zerodown.demo.sessions import SECRET_ENV, SESSIONS_MODES, LazySessions

KEEPALIVE_TIMEOUT = 5  # seconds; as uvicorn's and node's default, so proxies meet the usual race
STARTUP_POLL = 0.05  # how often a startup delay looks for a stop signal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DemoServer(uvicorn.Server):
    """uvicorn's server with a startup delay, a banner, and an exit code of 0 on SIGTERM."""

    def __init__(
        self, config: uvicorn.Config, *, startup_delay: float, ignore_sigterm: bool, name: str
    ) -> None:
        super().__init__(config)
        self._startup_delay = startup_delay
        self._ignore_sigterm = ignore_sigterm
        self._name = name

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_delay
        if self._startup_delay > 0:  # to stderr: stdout's one line means "listening"
            print(f"{self._name} starting, listening in {self._startup_delay:g}s", file=sys.stderr)
        while not self.should_exit and loop.time() < deadline:  # noqa: ASYNC110 - uvicorn's flag
            await asyncio.sleep(min(STARTUP_POLL, deadline - loop.time()))
        if self.should_exit:
            return  # stopped before it ever listened: uvicorn skips its shutdown
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            print(f"{self._name} listening on {host}:{port}", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._ignore_sigterm:
            return  # for tests of a runtime's stop grace: only SIGKILL ends us
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after its graceful shutdown, so the process
        # would end "killed by SIGTERM" (-15), which a runtime cannot tell from a
        # crash. A stop that finished its in-flight requests is a success: exit 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m zerodown.demo", description="The zerodown demo app."
    )
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--version", required=True, help="the release label it reports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--startup-delay", type=_non_negative, default=0.0, metavar="SECONDS")
    parser.add_argument("--error-rate", type=_rate, default=0.0, metavar="R", help="0..1")
    parser.add_argument(
        "--error-rate-for",
        type=_version_rate,
        action="append",
        default=[],
        metavar="VERSION=R",
        help="the error rate only when running as VERSION (a deploy command template is "
        "the same for every release, so a demo release built to fail is named here)",
    )
    parser.add_argument("--latency", type=_non_negative, default=0.0, metavar="MS")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument(
        "--sessions",
        choices=SESSIONS_MODES,
        default="memory",
        help="where the login flow (/login, /me, /logout) keeps sessions: this instance's "
        "memory (lost when it stops), Redis (shared; needs --redis-url), or signed tokens "
        f"(jwt; the secret from {SECRET_ENV}, the same for every instance)",
    )
    parser.add_argument("--redis-url", metavar="URL", help="with --sessions redis: redis://...")
    args = parser.parse_args(argv)
    if args.sessions == "redis" and not args.redis_url:
        parser.error("--sessions redis needs --redis-url URL")
    if args.sessions == "redis" and importlib.util.find_spec("redis") is None:
        parser.error("--sessions redis needs redis-py: pip install 'zerodown[redis]'")
    if args.redis_url and args.sessions != "redis":
        parser.error("--redis-url goes with --sessions redis")
    return args
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    error_rate = dict(args.error_rate_for).get(args.version, args.error_rate)
    settings = DemoSettings(args.version, error_rate=error_rate, latency_ms=args.latency)
    config = uvicorn.Config(
        DemoApp(settings, sessions=LazySessions(args.sessions, args.version, args.redis_url)),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="auto",
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=KEEPALIVE_TIMEOUT,
    )
    server = DemoServer(
        config,
        startup_delay=args.startup_delay,
        ignore_sigterm=args.ignore_sigterm,
        name=f"demo {args.version}",
    )
    server.run()


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _version_rate(text: str) -> tuple[str, float]:
    version, sep, rate = text.partition("=")
    if not sep or not version:
        raise argparse.ArgumentTypeError(f"{text!r} is not VERSION=RATE")
    return version, _rate(rate)
