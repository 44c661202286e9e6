"""A real redis-server per test: started on a reserved port, in its own directory,
with the append-only file on (fsync on every write), so a restart, even after
SIGKILL, finds every session that was written before it.

    def test_x(redis_server: RedisServer) -> None:
        redis_server.url            # "redis://127.0.0.1:PORT/0"
        redis_server.restart()      # SIGKILL, then start again on the same port and data

A missing redis-server fails the test naming the package (scripts/system-deps
installs it); it never skips.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import reserved_port

START_TIMEOUT = 10.0  # spawn to PING answered
STOP_TIMEOUT = 5.0
POLL = 0.02


class RedisServer:
    """One redis-server process on 127.0.0.1 and a fixed port, restartable."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server") or _sbin("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is missing: apt-get install redis-server (scripts/system-deps)"
            )
        self.binary = binary
        self.root = root
        self.port = reserved_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.root),
            "--save", "",  # no RDB snapshots: the AOF below is the durability
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server silent after {START_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(POLL)

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what the AOF holds comes back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def restart_empty(self) -> None:
        """SIGKILL, lose the data (as a Redis without persistence does), start again."""
        self.kill()
        for leftover in self.root.iterdir():
            if leftover.is_dir():  # appendonlydir/
                shutil.rmtree(leftover)
            elif leftover != self.log_path:
                leftover.unlink()
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def ping(self) -> bool:
        """PING in RESP over a raw socket: no client library between the test and the server."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no redis log)"


def _sbin(name: str) -> str | None:
    for folder in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        path = Path(folder, name)
        if path.exists():
            return str(path)
    return None


@contextlib.contextmanager
def running_redis(root: Path) -> Iterator[RedisServer]:
    server = RedisServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
