"""The recipes of docs/sessions.md, run as written: each example app twice
(two instances, as during a deploy), against a real redis-server where it
uses one. A login on one instance is known to the other; a logout on the
other is seen by the first (a JWT's is not: it lives in the browser)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import reserved_port
from redis_harness import RedisServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sessions"
START_TIMEOUT = 15.0
POLL = 0.05

Start = Callable[[str, dict[str, str]], int]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(example, env): the example listening on a reserved port; its port."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(example: str, env: dict[str, str]) -> int:
        port = reserved_port()
        log = (tmp_path / f"{example}-{port}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / example)],
            env={**os.environ, **env, "PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            text = Path(log.name).read_text(errors="replace")
            assert proc.poll() is None, f"{example} exited {proc.returncode}:\n{text}"
            assert time.monotonic() < deadline, f"{example} not listening:\n{text}"
            time.sleep(POLL)
        return port

    yield run
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Browser:
    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def call(self, port: int, method: str, path: str, body: str = "") -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            response.read()
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, value = header.split(";")[0].partition("=")
                lower = header.lower()
                if "max-age=0" in lower or "1970" in lower or value in ("", '""'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return response.status
        finally:
            conn.close()


@pytest.mark.parametrize("example", ["flask_app.py", "starlette_app.py"])
def test_a_redis_session_is_known_to_every_instance(
    start: Start, redis_server: RedisServer, example: str
) -> None:
    env = {"REDIS_URL": redis_server.url, "SECRET_KEY": "test"}
    a, b = start(example, env), start(example, env)
    user = Browser()
    assert user.call(a, "GET", "/me") == 401
    assert user.call(a, "POST", "/login", "user=alice") == 200
    assert user.call(b, "GET", "/me") == 200, "the other instance does not know the login"
    redis_server.restart()  # SIGKILL: only the append-only file brings it back
    assert user.call(b, "GET", "/me") == 200, "the session did not survive a Redis restart"
    kept = dict(user.cookies)
    assert user.call(b, "POST", "/logout") == 200
    user.cookies = kept  # a copy of the old cookie: the session is gone from Redis all the same
    assert user.call(a, "GET", "/me") == 401


def test_a_jwt_is_checked_by_any_instance_with_the_secret(start: Start) -> None:
    a, b = (
        start("jwt_app.py", {"APP_SECRET": "shared"}),
        start("jwt_app.py", {"APP_SECRET": "shared"}),
    )
    other = start("jwt_app.py", {"APP_SECRET": "another"})
    user = Browser()
    assert user.call(a, "POST", "/login", "user=alice") == 200
    assert user.call(b, "GET", "/me") == 200
    assert user.call(other, "GET", "/me") == 401
    kept = dict(user.cookies)
    assert user.call(b, "POST", "/logout") == 200
    assert user.call(a, "GET", "/me") == 401
    # The trade-off the docs state: a copied token outlives the logout.
    user.cookies = kept
    assert user.call(a, "GET", "/me") == 200
