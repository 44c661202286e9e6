"""A client for the admin API, on the standard library alone.

    client = AdminClient.from_config(config)        # admin address + ZERODOWN_TOKEN
    deploy_id = client.deploy("web", "v2")
    view = client.wait(deploy_id, timeout=60)        # DeployView, outcome set or not
    for event in client.events(service="web"): ...  # EventView dicts as they happen

Every method is one HTTP request (events() is one long response). A refusal
raises AdminError with the server's status and its `{"error"}` line; no
answer at all raises AdminUnreachable, whose message tells how to fix it.
The views are the JSON of the models zerodown.deploy.contract defines.

http.client rather than httpx or requests: the CLI starts fast, and the
client adds no dependency to a tool whose job is to be installed anywhere.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Final

from zerodown.config import Config
from zerodown.config.strategy import StrategyName
from zerodown.control.wire import (
    JSON_TYPE,
    SSE_KEEPALIVE,
    STATE_CHANGING,
    TOKEN_ENV,
    WAIT_DEFAULT,
)
from zerodown.deploy.contract import JsonView as View
from zerodown.errors import ConfigError, ZerodownError

__all__ = [
    "TOKEN_ENV",
    "AdminClient",
    "AdminError",
    "AdminUnreachable",
    "EventStream",
    "parse_sse",
]

DEFAULT_TIMEOUT: Final = 10.0  # seconds for the daemon to answer a plain request
# The server sends a comment every SSE_KEEPALIVE on an idle event stream;
# three missed ones mean the connection is dead, not quiet.
EVENTS_READ_TIMEOUT: Final = 3 * SSE_KEEPALIVE
# Listening on every address: the daemon is reached on loopback from here.
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


class AdminError(ZerodownError):
    """The admin API refused a request; `status` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminUnreachable(AdminError):
    """Nothing answered at the admin address (daemon not running, wrong address, timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


class AdminClient:
    """Blocking calls to one zerodown daemon's admin API."""

    def __init__(self, base_url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"admin URL {base_url!r} is not http://host:port")
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")  # the API may sit under a path behind a proxy

    def __repr__(self) -> str:
        return f"<AdminClient {self.base_url} token={'set' if self.token else 'none'}>"

    @classmethod
    def from_config(cls, config: Config, timeout: float = DEFAULT_TIMEOUT) -> AdminClient:
        """The daemon `config` describes: its `proxy.admin` listener, token from ZERODOWN_TOKEN."""
        return cls(admin_url(config.proxy.admin), os.environ.get(TOKEN_ENV), timeout)

    # -- deploys ---------------------------------------------------------------

    def deploy(self, service: str, version: str, strategy: StrategyName | None = None) -> int:
        """Start a deploy; its id. The deploy runs on in the daemon."""
        body: dict[str, Any] = {"version": version}
        if strategy is not None:
            body["strategy"] = strategy
        reply = self._call("POST", f"/v1/services/{_q(service)}/deploys", body=body)
        return int(reply["deploy_id"])

    def deploy_view(self, deploy_id: int) -> View:
        result: View = self._call("GET", f"/v1/deploys/{deploy_id}")
        return result

    def wait(self, deploy_id: int, timeout: float = WAIT_DEFAULT) -> View:
        """The DeployView once it has an outcome, or as it is after `timeout` (at most WAIT_MAX).

        A longer `timeout` is refused by the server (400); poll again instead.
        """
        query = urllib.parse.urlencode({"timeout": timeout})
        # The socket waits for the server's long poll plus the usual margin.
        path = f"/v1/deploys/{deploy_id}/wait?{query}"
        result: View = self._call("GET", path, timeout=timeout + self.timeout)
        return result

    def rollback(self, service: str, to: str | None = None) -> int:
        body = {"to": to} if to is not None else {}
        reply = self._call("POST", f"/v1/services/{_q(service)}/rollback", body=body)
        return int(reply["deploy_id"])

    def promote(self, service: str) -> None:
        self._call("POST", f"/v1/services/{_q(service)}/promote")

    def abort(self, service: str) -> None:
        self._call("POST", f"/v1/services/{_q(service)}/abort")

    def pause(self, service: str) -> None:
        self._call("POST", f"/v1/services/{_q(service)}/pause")

    def resume(self, service: str) -> None:
        self._call("POST", f"/v1/services/{_q(service)}/resume")

    # -- state -----------------------------------------------------------------

    def status(self, service: str | None = None) -> list[View]:
        """StatusViews: every service's, or a list of the one named."""
        if service is None:
            views: list[View] = self._call("GET", "/v1/status")
            return views
        return [self._call("GET", f"/v1/services/{_q(service)}/status")]

    def releases(self, service: str) -> list[View]:
        result: list[View] = self._call("GET", f"/v1/services/{_q(service)}/releases")
        return result

    def stats(self) -> View:
        """The data plane's counters (/v1/stats: zerodown.stats.Stats as JSON)."""
        result: View = self._call("GET", "/v1/stats")
        return result

    def health(self) -> View:
        """`{"ok": true, "pid": N}`: the daemon answers, and which process it is."""
        result: View = self._call("GET", "/v1/health")
        return result

    def routing(self) -> View:
        """The routing table in force, as JSON (services, routes, pools, split)."""
        result: View = self._call("GET", "/v1/routing")
        return result

    def events(self, after: int = 0, service: str | None = None) -> Generator[View, None, None]:
        """EventViews after id `after`, then live ones until the server ends the stream.

        Closing the iterator (or leaving a `for` loop over it) closes the connection.
        """
        stream = self.event_stream(after, service)
        try:
            yield from stream
        finally:
            stream.close()

    def event_stream(self, after: int = 0, service: str | None = None) -> EventStream:
        """The event stream, connected: iterate it for EventViews; `close()` ends it
        from any thread (a reader blocked on it sees the end)."""
        params: dict[str, Any] = {"after": after}
        if service is not None:
            params["service"] = service
        path = f"/v1/events?{urllib.parse.urlencode(params)}"
        headers = {"Accept": "text/event-stream"}
        conn, response = self._open("GET", path, None, headers, EVENTS_READ_TIMEOUT)
        if response.status != 200:
            try:
                raise _refusal(response.status, response.reason, response.read())
            finally:
                conn.close()
        return EventStream(self, conn, response)

    # -- transport -------------------------------------------------------------

    def _call(
        self, method: str, path: str, *, body: Any = None, timeout: float | None = None
    ) -> Any:
        """One request; its JSON reply, or AdminError with the server's message."""
        if body is None and method in STATE_CHANGING:
            # The server wants the JSON type on every change, bodyless or not
            # (its guard against cross-site forms); `{}` makes the type true.
            body = {}
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": JSON_TYPE}
        if data is not None:
            headers["Content-Type"] = JSON_TYPE
        conn, response = self._open(method, path, data, headers, timeout or self.timeout)
        try:
            payload = response.read()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise self._lost(exc) from exc
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise _refusal(response.status, response.reason, payload)
        return json.loads(payload) if payload else None

    def _open(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Connect, send, read the status line and headers."""
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=timeout)
        if self.token:
            headers = {**headers, "Authorization": f"Bearer {self.token}"}
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise self._unreachable() from exc
        try:
            conn.request(method, self._prefix + path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._lost(exc) from exc

    def _unreachable(self) -> AdminUnreachable:
        return AdminUnreachable(
            f"cannot reach zerodown at {self.base_url}: is `zerodown serve` running?"
        )

    def _lost(self, exc: BaseException) -> AdminUnreachable:
        if isinstance(exc, TimeoutError):
            return AdminUnreachable(f"zerodown at {self.base_url} did not answer in time")
        return AdminUnreachable(f"lost the connection to zerodown at {self.base_url}: {exc}")


class EventStream:
    """One open `GET /v1/events`: iterating yields EventView dicts until it ends."""

    def __init__(
        self,
        client: AdminClient,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
    ) -> None:
        self._client = client
        self._conn = conn
        self._response = response
        self._reading = False
        self.closed = False

    def __iter__(self) -> Iterator[View]:
        self._reading = True
        try:
            lines = (raw.decode("utf-8").rstrip("\r\n") for raw in _lines(self._response))
            for message in parse_sse(lines):
                if message.get("data"):
                    yield json.loads(message["data"])
        except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
            if not self.closed:  # a close() from another thread is no loss
                raise self._client._lost(exc) from exc
        finally:
            self.closed = True
            self._conn.close()  # in the reader's thread: http.client is not thread-safe

    def close(self) -> None:
        """End the stream; from another thread, it wakes the reader, which closes it."""
        self.closed = True
        if not self._reading:
            self._conn.close()
            return
        sock = self._conn.sock
        if sock is not None:
            # shutdown, not close: it wakes a reader blocked in recv().
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def admin_url(address: str) -> str:
    """http://host:port for a `proxy.admin` listener such as "127.0.0.1:9900"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{address!r} is not host:port", key="proxy.admin")
    if port == "0":
        # The OS picks the port at start; only the daemon's own output tells it.
        raise ConfigError("port 0 cannot be reached from the CLI; name a port", key="proxy.admin")
    host = _WILDCARDS.get(host, host).strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events from text lines (without their line ends): one dict per message.

    The keys are the fields that came (`id`, `event`, `data`); several `data`
    lines join with "\\n"; comments (":" lines) and unknown fields are skipped,
    as the HTML Living Standard §9.2.6 says a client does.
    """
    message: dict[str, str] = {}
    for line in lines:
        if not line:
            if message:
                yield message
            message = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data" and "data" in message:
            message["data"] += "\n" + value
        elif name in ("id", "event", "data", "retry"):
            message[name] = value


def _lines(response: http.client.HTTPResponse) -> Iterator[bytes]:
    # readline() undoes the chunked encoding a stream arrives in.
    while line := response.readline():
        yield line


def _refusal(status: int, reason: str, payload: bytes) -> AdminError:
    """AdminError with the server's `{"error"}` line, or the status line if there is none."""
    try:
        message = str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {status} {reason}"
    return AdminError(status, message)


def _q(segment: str) -> str:
    """One path segment, so a name with "/" or "?" cannot change the route."""
    return urllib.parse.quote(segment, safe="")
