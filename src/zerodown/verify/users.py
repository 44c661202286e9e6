"""Virtual users for `verify --sessions N`: the I/O half (verify/sessions.py counts).

Each user has its own keep-alive connection and cookie jar, as a browser
would: it keeps every cookie a response sets, the app's session cookie and
any the proxy adds (a `sticky` route cookie, a canary pool cookie), and sends
them back. It logs in once (POST /login), then asks GET /me every `interval`
until told to stop, and once more at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from zerodown.errors import ConfigError
from zerodown.verify.connection import (
    BadResponse,
    ConnectFailed,
    Connection,
    ConnectionClosed,
    Response,
    tls_context,
)
from zerodown.verify.load import USER_AGENT, Target, clock, host_header, server_name
from zerodown.verify.sessions import Check, UserRun

CHECK_INTERVAL = 0.2  # seconds between one user's GET /me
REQUEST_TIMEOUT = 5.0
LOGIN_CONCURRENCY = 16  # logins in flight at once, before the load
KEPT_BODY = 256  # bytes of an error answer kept as its reason (a 503 says what failed)
MAX_USERS = 10_000


@dataclass(frozen=True, slots=True)
class SessionSpec:
    users: int
    login_path: str = "/login"
    me_path: str = "/me"
    interval: float = CHECK_INTERVAL
    timeout: float = REQUEST_TIMEOUT

    def __post_init__(self) -> None:
        if not 1 <= self.users <= MAX_USERS:
            raise ConfigError(f"must be within 1..{MAX_USERS}", key="verify.sessions")
        if self.interval <= 0 or self.timeout <= 0:
            raise ConfigError("interval and timeout must be positive", key="verify.sessions")


def keep_cookies(jar: dict[str, str], set_cookies: tuple[str, ...]) -> None:
    """Update `jar` (name -> value) from Set-Cookie values: Max-Age=0 or an
    expiry in the past removes the cookie, as a browser does (RFC 6265 5.3)."""
    for header in set_cookies:
        pair, *attributes = header.split(";")
        name, sep, value = pair.strip().partition("=")
        if not sep or not name:
            continue  # not a cookie (RFC 6265 5.2: ignore it)
        expired = any(_expires_now(a) for a in attributes)
        if expired:
            jar.pop(name, None)
        else:
            jar[name] = value.strip()


def _expires_now(attribute: str) -> bool:
    key, _, value = attribute.strip().partition("=")
    key, value = key.strip().lower(), value.strip()
    if key == "max-age":
        return value.lstrip("-").isdigit() and int(value) <= 0
    return key == "expires" and "1970" in value  # how a deleted cookie is written


class VirtualUser:
    """One logged-in user: its connection, its cookies, what it saw."""

    def __init__(
        self,
        name: str,
        target: Target,
        headers: Mapping[str, str],
        spec: SessionSpec,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.spec = spec
        self.tls = tls  # https: the same as the load's (verify/load.py)
        self.server_name = server_name(headers, target)
        self.jar: dict[str, str] = {}
        self.checks: list[Check] = []
        self.logged_in = False
        self.login_reason = ""
        self._conn: Connection | None = None
        extra = [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
        self._head = "".join(f"{line}\r\n" for line in [f"User-Agent: {USER_AGENT}", *extra])
        self._head = f"Host: {host_header(headers, target)}\r\n" + self._head

    def run(self) -> UserRun:
        return UserRun(self.name, self.logged_in, tuple(self.checks), self.login_reason)

    async def login(self) -> None:
        body = f"user={self.name}".encode()
        kind = "Content-Type: application/x-www-form-urlencoded\r\n"
        head = f"{kind}Content-Length: {len(body)}\r\n"
        answer = await self._request("POST", self.spec.login_path, head, body)
        if isinstance(answer, Response) and answer.status == 200:
            self.logged_in = True
        else:
            self.login_reason = _reason(answer)

    async def check(self) -> None:
        answer = await self._request("GET", self.spec.me_path)
        if isinstance(answer, Response):
            reason = "" if answer.status == 200 else _first_line(answer.body)
            check = Check(clock(), answer.status, answer.version or "-", reason)
        else:
            check = Check(clock(), 0, "-", answer)
        self.checks.append(check)

    async def keep_checking(self, stop: asyncio.Event) -> None:
        """GET /me every interval until `stop`; the first after a random part of
        one, so that N users do not ask all at the same instant."""
        delay = random.random() * self.spec.interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
                    return
            await self.check()
            delay = self.spec.interval

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    async def _request(
        self, method: str, path: str, head: str = "", body: bytes = b""
    ) -> Response | str:
        cookie = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        cookie_line = f"Cookie: {cookie}\r\n" if cookie else ""
        request = f"{method} {path} HTTP/1.1\r\n{self._head}{cookie_line}{head}\r\n".encode()
        try:
            async with asyncio.timeout(self.spec.timeout):
                answer = await self._exchange(request + body)
        except TimeoutError:
            failure = f"no answer within {self.spec.timeout:g} s"
        except ConnectFailed as exc:
            failure = f"connect failed: {exc}"
        except ConnectionClosed:
            failure = "connection closed before the answer"
        except BadResponse as exc:
            failure = f"not HTTP: {exc}"
        else:
            keep_cookies(self.jar, answer.cookies)
            return answer
        self.close()
        return failure

    async def _exchange(self, request: bytes) -> Response:
        if self._conn is not None and not self._conn.closed:
            try:
                return await self._conn.send(request)
            except ConnectionClosed as exc:
                if not exc.before_response:  # the keep-alive race: once more, on a new one
                    raise
        self.close()
        target = self.target
        self._conn = await Connection.open(
            target.host, target.port, self.tls, keep_body=KEPT_BODY, server_name=self.server_name
        )
        return await self._conn.send(request)


def _reason(answer: Response | str) -> str:
    if isinstance(answer, str):
        return answer
    line = _first_line(answer.body)
    return line if line.startswith(str(answer.status)) else f"{answer.status} {line}".strip()


def _first_line(body: bytes) -> str:
    lines = body.decode("utf-8", "replace").strip().splitlines()
    return lines[0] if lines else ""


async def log_in(users: list[VirtualUser]) -> None:
    """Every user's login, LOGIN_CONCURRENCY at a time."""
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(user: VirtualUser) -> None:
        async with gate:
            await user.login()

    await asyncio.gather(*(one(user) for user in users))


def make_users(
    spec: SessionSpec, url: str, headers: Mapping[str, str], check_cert: bool = True
) -> list[VirtualUser]:
    """The users of `url` (http or https; `check_cert` as the load's LoadSpec has it)."""
    target = Target.parse(url)
    tls = tls_context(check_cert) if target.tls else None  # one context for all: it is shared
    return [VirtualUser(f"verify-{i + 1}", target, headers, spec, tls) for i in range(spec.users)]


class UserGroup:
    """The virtual users of one run: logged in, then checking, then a last check each."""

    def __init__(self, users: list[VirtualUser]) -> None:
        self.users = users
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def of(
        cls, spec: SessionSpec, url: str, headers: Mapping[str, str], check_cert: bool = True
    ) -> UserGroup:
        return cls(make_users(spec, url, headers, check_cert))

    async def log_in(self) -> None:
        await log_in(self.users)

    def start(self) -> None:
        """Logged-in users start asking GET /me (the others have nothing to ask)."""
        self._tasks = [
            asyncio.create_task(user.keep_checking(self._stop))
            for user in self.users
            if user.logged_in
        ]

    async def finish(self) -> list[UserRun]:
        """Stop asking, ask once more (after the deploy), and return what each user saw."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await asyncio.gather(*(user.check() for user in self.users if user.logged_in))
        self.close()
        return [user.run() for user in self.users]

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        for user in self.users:
            user.close()
