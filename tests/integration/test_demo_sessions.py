"""The demo app's login flow as real processes: two instances behind no proxy,
a login on one and /me on the other, with the session in memory, in a real
redis-server, or in a signed token; and Redis dying and coming back."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from redis_harness import RedisServer
from zerodown.demo.process import AppProcess, spawn_app, stop_process
from zerodown.demo.sessions import SECRET_ENV

DEADLINE = 10.0
Spawn = Callable[..., AppProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[AppProcess] = []

    def start(*flags: str, version: str = "v1") -> AppProcess:
        started.append(spawn_app(version, *flags, timeout=DEADLINE))
        return started[-1]

    yield start
    for app in started:
        stop_process(app.proc, 0)


class Browser:
    """One user's cookie jar, as a browser keeps it: a Set-Cookie with Max-Age=0,
    or an expiry in the past, drops the cookie."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def call(
        self, app: AppProcess, method: str, path: str, body: bytes = b"", kind: str = ""
    ) -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPConnection(app.host, app.port, timeout=DEADLINE)
        headers = {"Content-Type": kind} if kind else {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
            for value in response.headers.get_all("Set-Cookie") or []:
                self._keep(value)
            return response.status, text, {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def _keep(self, header: str) -> None:
        pair, *attributes = header.split(";")
        name, _, value = pair.strip().partition("=")
        gone = any(a.strip().lower() in ("max-age=0", "expires=thu, 01 jan 1970 00:00:00 gmt")
                   for a in attributes)  # fmt: skip
        if gone:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    def login(self, app: AppProcess, user: str = "alice") -> int:
        return self.call(app, "POST", "/login", f"user={user}".encode(), FORM)[0]

    def me(self, app: AppProcess) -> tuple[int, str]:
        status, text, _ = self.call(app, "GET", "/me")
        return status, text


FORM = "application/x-www-form-urlencoded"


def test_memory_sessions_live_in_one_instance(spawn: Spawn) -> None:
    a, b = spawn("--sessions", "memory"), spawn("--sessions", "memory", version="v2")
    user = Browser()
    assert user.login(a) == 200
    assert user.me(a) == (200, '{"user": "alice", "version": "v1"}\n')
    status, text = user.me(b)
    assert (status, text) == (401, "not logged in: POST /login first\n")


def test_redis_sessions_are_shared_and_logout_reaches_every_instance(
    spawn: Spawn, redis_server: RedisServer
) -> None:
    flags = ("--sessions", "redis", "--redis-url", redis_server.url)
    a, b = spawn(*flags), spawn(*flags, version="v2")
    user, other = Browser(), Browser()
    assert user.login(a) == 200
    assert other.login(b, "bob") == 200
    assert user.me(b) == (200, '{"user": "alice", "version": "v2"}\n')
    assert other.me(a) == (200, '{"user": "bob", "version": "v1"}\n')
    assert user.call(b, "POST", "/logout")[0] == 200
    assert "zd_session" not in user.cookies
    assert user.me(a)[0] == 401
    assert other.me(b)[0] == 200, "one user's logout logged another out"


def test_jwt_sessions_need_only_the_shared_secret(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "shared-by-both")
    a, b = spawn("--sessions", "jwt"), spawn("--sessions", "jwt", version="v2")
    monkeypatch.setenv(SECRET_ENV, "another-secret")
    stranger = spawn("--sessions", "jwt", version="v3")
    user = Browser()
    assert user.login(a) == 200
    assert user.me(b) == (200, '{"user": "alice", "version": "v2"}\n')
    status, text = user.me(stranger)
    assert status == 401
    assert "Signature verification failed" in text, text
    # A bearer token works as the cookie does (an API client).
    token = user.cookies["zd_token"]
    conn = http.client.HTTPConnection(b.host, b.port, timeout=DEADLINE)
    conn.request("GET", "/me", headers={"Authorization": f"Bearer {token}"})
    assert conn.getresponse().status == 200
    conn.close()


def test_redis_down_is_a_clear_503_and_sessions_come_back_with_it(
    spawn: Spawn, redis_server: RedisServer
) -> None:
    app = spawn("--sessions", "redis", "--redis-url", redis_server.url)
    user = Browser()
    assert user.login(app) == 200
    redis_server.kill()
    status, text = user.me(app)
    assert status == 503, text
    assert text.startswith("session store unavailable (redis): connecting to 127.0.0.1:"), text
    assert text.endswith(": Connection refused; try again\n"), text
    assert "Traceback" not in text
    assert Browser().login(app) == 503, "a login that could not be stored said 200"
    # The hot path does not touch the store.
    assert Browser().call(app, "GET", "/health")[0] == 200
    redis_server.start()  # the same port and directory: the fsynced AOF replays
    assert user.me(app) == (200, '{"user": "alice", "version": "v1"}\n')


@pytest.mark.parametrize(
    ("body", "kind", "status", "said"),
    [
        (b"", FORM, 400, "no user name"),
        (b"{", "application/json", 400, "not JSON"),
        (b'{"user": 7}', "application/json", 400, "no user name"),
        (b"user=" + b"x" * 65, FORM, 400, "1 to 64 printable"),
        (b"user=" + b"x" * 5000, FORM, 413, "over 4096 bytes"),
    ],
)
def test_a_bad_login_says_why(
    login_app: AppProcess, body: bytes, kind: str, status: int, said: str
) -> None:
    got, text, headers = Browser().call(login_app, "POST", "/login", body, kind)
    assert (got, said in text) == (status, True), text
    assert headers["x-version"] == "v1"
    assert "set-cookie" not in headers


def test_json_login_and_the_wrong_method(login_app: AppProcess) -> None:
    user = Browser()
    status, text, headers = user.call(
        login_app, "POST", "/login", json.dumps({"user": "carol"}).encode(), "application/json"
    )
    assert status == 200, text
    assert headers["x-version"] == "v1"
    assert user.me(login_app)[0] == 200
    assert user.call(login_app, "POST", "/me")[0] == 405
    status, _, headers = user.call(login_app, "GET", "/login")
    assert (status, headers["allow"]) == (405, "POST")
    # Other paths are untouched: no session cookie, POSTs still echo.
    status, text, headers = user.call(login_app, "POST", "/echo", b"hi", "text/plain")
    assert (status, text, "set-cookie" in headers) == (200, "hi", False)


@pytest.fixture(scope="module")
def login_app() -> Iterator[AppProcess]:
    shared = spawn_app("v1", "--sessions", "memory", timeout=DEADLINE)
    yield shared
    stop_process(shared.proc, 0)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--sessions", "redis"], "--sessions redis needs --redis-url URL"),
        (["--redis-url", "redis://127.0.0.1:1/0"], "--redis-url goes with --sessions redis"),
        (["--sessions", "disk"], "invalid choice: 'disk'"),
    ],
)
def test_bad_session_flags_are_refused(flags: list[str], said: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zerodown.demo", "--port", "0", "--version", "v1", *flags],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2
    assert said in done.stderr, done.stderr
