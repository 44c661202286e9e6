"""The demo app as a real process on a free port (`--port 0`), and `zerodown demo`.

Deadlines, not sleeps: every wait is bounded and no test asserts on time.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from harness import reserved_port, reserved_ports
from zerodown.cli.client import AdminClient
from zerodown.config import defaults, load_config
from zerodown.demo.process import AppProcess, DemoError, read_line, spawn_app, stop_process
from zerodown.demo.run import DEMO_PORTS, SERVE_LOG, _wait_ready, demo_config, free_window, run_demo

DEADLINE = 10.0


@pytest.fixture
def spawn() -> Iterator[Callable[..., AppProcess]]:
    """spawn(*flags, version="v1"): a demo app on a free port, killed after the test."""
    started: list[AppProcess] = []

    def start(*flags: str, version: str = "v1", timeout: float = DEADLINE) -> AppProcess:
        started.append(spawn_app(version, *flags, timeout=timeout))
        return started[-1]

    yield start
    for app in started:
        stop_process(app.proc, 0)


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    """One instance shared by the tests that only ask it questions."""
    shared = spawn_app("v1", timeout=DEADLINE)
    yield shared
    stop_process(shared.proc, 0)


def request(
    app: AppProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection(app.host, app.port, timeout=DEADLINE)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_root_answers_its_version_in_body_and_header(app: AppProcess) -> None:
    response, body = request(app, "GET", "/")
    assert (response.status, body) == (200, b"v1\n")
    assert response.headers["X-Version"] == "v1"
    assert response.headers["Content-Type"].startswith("text/plain")


def test_every_response_carries_x_version(app: AppProcess) -> None:
    for method, path in [("GET", "/health"), ("GET", "/status?code=404"), ("HEAD", "/")]:
        response, _ = request(app, method, path)
        assert response.headers["X-Version"] == "v1", (method, path)


def test_health(app: AppProcess) -> None:
    response, body = request(app, "GET", "/health")
    assert (response.status, body) == (200, b"ok")


def test_echo_streams_a_5_mb_body_back_with_its_content_type(app: AppProcess) -> None:
    payload = os.urandom(5 * 1024 * 1024)
    response, body = request(app, "POST", "/echo", payload, {"Content-Type": "application/x-test"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-test"
    assert response.headers["Content-Length"] == str(len(payload))
    assert body == payload


def test_echo_of_a_chunked_body_on_any_path(app: AppProcess) -> None:
    conn = http.client.HTTPConnection(app.host, app.port, timeout=DEADLINE)
    chunks = [b"a" * 1000, b"b" * 70_000, b"c"]
    conn.request("PUT", "/anything", body=iter(chunks), encode_chunked=True)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"".join(chunks))
    assert response.headers["Transfer-Encoding"] == "chunked"
    conn.close()


@pytest.mark.parametrize("code", [200, 201, 404, 500, 503])
def test_status_with_body(app: AppProcess, code: int) -> None:
    response, body = request(app, "GET", f"/status?code={code}")
    assert (response.status, body) == (code, f"{code}\n".encode())


@pytest.mark.parametrize("code", [204, 304])
def test_status_without_body(app: AppProcess, code: int) -> None:
    response, body = request(app, "GET", f"/status?code={code}")
    assert (response.status, body) == (code, b"")
    assert response.headers["Content-Length"] is None
    assert response.headers["Transfer-Encoding"] is None


@pytest.mark.parametrize("query", ["code=abc", "code=99", "code=600"])
def test_bad_status_query_is_400(app: AppProcess, query: str) -> None:
    response, _ = request(app, "GET", f"/status?{query}")
    assert response.status == 400


def test_headers_returns_what_it_received_as_json(app: AppProcess) -> None:
    conn = http.client.HTTPConnection(app.host, app.port, timeout=DEADLINE)
    conn.putrequest("GET", "/headers", skip_host=True)
    conn.putheader("Host", "example.test")
    conn.putheader("X-Request-ID", "abc-123")
    conn.putheader("X-Forwarded-For", "10.0.0.1")
    conn.putheader("X-Forwarded-For", "10.0.0.2")
    conn.endheaders()
    response = conn.getresponse()
    seen = json.loads(response.read())
    conn.close()
    assert response.headers["Content-Type"] == "application/json"
    assert seen["host"] == "example.test"
    assert seen["x-request-id"] == "abc-123"
    assert seen["x-forwarded-for"] == "10.0.0.1, 10.0.0.2"


def test_request_shows_the_request_line_and_raw_headers(app: AppProcess) -> None:
    _, body = request(app, "GET", "/request?a=1", headers={"X-A": "1"})
    seen = json.loads(body)
    assert seen["method"] == "GET"
    assert seen["path"] == "/request"
    assert seen["query_string"] == "a=1"
    assert seen["http_version"] == "1.1"
    assert ["x-a", "1"] in seen["headers"]


def test_bytes_streams_n_bytes_of_the_pattern(app: AppProcess) -> None:
    n = 3 * 65536 + 123
    response, body = request(app, "GET", f"/bytes?n={n}")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(n)
    assert body == bytes(i % 256 for i in range(n))


def test_head_has_headers_but_no_body(app: AppProcess) -> None:
    response, body = request(app, "HEAD", "/bytes?n=1000000")
    assert (response.status, response.headers["Content-Length"], body) == (200, "1000000", b"")


def test_slow_answers_200(app: AppProcess) -> None:
    response, body = request(app, "GET", "/slow?ms=50")
    assert (response.status, body) == (200, b"v1\n")


def test_websocket_echo(app: AppProcess) -> None:
    with ws_connect(f"ws://{app.address}/ws", open_timeout=DEADLINE) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Version"] == "v1"
        ws.send("hello")
        assert ws.recv(timeout=DEADLINE) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=DEADLINE) == b"\x00\x01binary"


def test_error_rate_1_fails_everything_but_health(spawn: Callable[..., AppProcess]) -> None:
    app = spawn("--error-rate", "1", version="v9")
    for path in ["/", "/slow?ms=1", "/headers"]:
        response, body = request(app, "GET", path)
        assert (response.status, body) == (500, b"injected error\n")
        assert response.headers["X-Version"] == "v9"
    assert request(app, "GET", "/health")[0].status == 200


def test_latency_still_answers(spawn: Callable[..., AppProcess]) -> None:
    app = spawn("--latency", "20")
    assert [request(app, "GET", "/")[0].status for _ in range(3)] == [200, 200, 200]


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    spawn: Callable[..., AppProcess],
) -> None:
    app = spawn()
    slow = socket.create_connection((app.host, app.port), timeout=DEADLINE)
    slow.sendall(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: demo\r\n\r\n")
    # A round trip on another connection: the app has accepted and parsed the
    # slow request by the time this one is answered (one event loop, FIFO).
    assert request(app, "GET", "/health")[0].status == 200
    app.proc.send_signal(signal.SIGTERM)

    response = http.client.HTTPResponse(slow)
    response.begin()
    assert (response.status, response.read()) == (200, b"v1\n")
    assert response.headers["Connection"] == "close"  # shutting down: no keep-alive
    slow.close()
    assert app.proc.wait(DEADLINE) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((app.host, app.port), timeout=DEADLINE)


def test_sigterm_when_idle_exits_0(spawn: Callable[..., AppProcess]) -> None:
    app = spawn()
    assert request(app, "GET", "/")[0].status == 200
    assert app.stop() == 0


def test_sigterm_during_the_startup_delay_exits_0_without_listening() -> None:
    command = [sys.executable, "-m", "zerodown.demo", "--port", "0", "--version", "v1"]
    with subprocess.Popen(
        [*command, "--startup-delay", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            # Its stop handler is in place once it says it is starting.
            assert b"starting" in proc.stderr.readline()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(DEADLINE) == 0
            assert proc.stdout.read() == b""  # never printed its listening line
        finally:
            stop_process(proc, 0)


def test_startup_delay_then_listens(spawn: Callable[..., AppProcess]) -> None:
    app = spawn("--startup-delay", "0.2", timeout=DEADLINE + 0.2)
    assert request(app, "GET", "/health")[0].status == 200


def test_ignore_sigterm_keeps_serving_until_sigint(spawn: Callable[..., AppProcess]) -> None:
    app = spawn("--ignore-sigterm")
    app.proc.send_signal(signal.SIGTERM)
    # Had SIGTERM been honoured, the listener would close while this sleeps.
    assert request(app, "GET", "/slow?ms=300")[0].status == 200
    assert request(app, "GET", "/")[0].status == 200
    assert app.proc.poll() is None
    app.proc.send_signal(signal.SIGINT)
    assert app.proc.wait(DEADLINE) == 0


# -- zerodown demo ------------------------------------------------------------


@pytest.fixture
def demo_logs(tmp_path: Path) -> Iterator[io.StringIO]:
    """The demo's output; printed, with the daemon's log, when the test fails."""
    out = io.StringIO()
    yield out
    print("---- zerodown demo output ----", out.getvalue(), sep="\n")
    logs = [tmp_path / SERVE_LOG, *sorted((tmp_path / "state" / "logs").rglob("*.log"))]
    for log in logs:
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"---- {log.relative_to(tmp_path)} ----", *tail, sep="\n")


def test_demo_tells_the_whole_story_and_leaves_nothing_running(
    tmp_path: Path, demo_logs: io.StringIO
) -> None:
    # Ports below the ephemeral range, reserved against other test processes:
    # a port from port 0 could be taken by any outgoing connection before the
    # demo's daemon binds it.
    # The instances' ports too: in the default range, every daemon another
    # test starts picks from the bottom up, and a demo app binds its port a
    # second after it was seen free; two daemons took one port that way.
    listen, admin = f"127.0.0.1:{reserved_port()}", f"127.0.0.1:{reserved_port()}"
    ports = reserved_ports(20)
    out = demo_logs
    told = run_demo(0.1, listen=listen, admin=admin, state_dir=tmp_path, out=out, ports=ports)
    outcomes = {chapter.version: (chapter.strategy, outcome) for chapter, outcome, _ in told}
    assert outcomes == {
        "v2": ("rolling", "succeeded"),
        "v3": ("blue_green", "succeeded"),
        "v4": ("canary", "succeeded"),
        "v5": ("canary", "rolled_back"),
    }
    reports = {chapter.version: report for chapter, _, report in told}
    for version in ("v2", "v3", "v4"):
        assert reports[version].failed == 0
        assert reports[version].total > 100
        assert (tmp_path / f"web-{version}.svg").exists()
    # The failing canary: clients saw errors only from its share, and v5 serves nothing now.
    assert 0 < reports["v5"].failed < reports["v5"].total * 0.3
    assert_refused(listen)
    assert not _processes(ports)


def test_demo_instances_take_free_ports_away_from_other_daemons(tmp_path: Path) -> None:
    # A daemon's instances take ports from the bottom of 20000-29999 by default,
    # and a demo app binds a second after its port was seen free: two daemons
    # there (a user's serve and the demo, or two tests) took the same port.
    # The ephemeral range is no better: every outgoing connection takes a port.
    (tmp_path / "zerodown.toml").write_text(
        demo_config("127.0.0.1:8080", "127.0.0.1:9900", tmp_path, free_window())
    )
    first, last = load_config(tmp_path / "zerodown.toml").services["web"].ports
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    assert DEMO_PORTS[0] <= first < last <= DEMO_PORTS[1]
    assert last < defaults.PORTS[0]
    assert last < int(ephemeral)
    for port in range(first, last + 1):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free now, each of them


@pytest.fixture
def users_serve(tmp_path: Path) -> Iterator[tuple[str, AdminClient]]:
    """A user's own `zerodown serve` with a deployable service `web`, nothing deployed;
    its admin address (port 0: announced on its first line) and a client of it."""
    root = tmp_path / "user"
    root.mkdir()
    config = root / "zerodown.toml"
    config.write_text(
        '[proxy]\nlisten = ["127.0.0.1:0"]\nadmin = "127.0.0.1:0"\n'
        f"state_dir = {json.dumps(str(root / 'state'))}\n\n"
        f'[services.web]\ncommand = "{sys.executable} -m zerodown.demo --port {{port}}"\n'
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)], stdout=subprocess.PIPE
    )
    try:
        line = read_line(serve, DEADLINE)  # "zerodown: proxy on ...; admin on HOST:PORT"
        admin = line.rpartition(" admin on ")[2]
        yield admin, AdminClient(f"http://{admin}", None, DEADLINE)
    finally:
        stop_process(serve, DEADLINE)


def test_demo_refuses_an_admin_address_another_daemon_holds(
    tmp_path: Path, users_serve: tuple[str, AdminClient]
) -> None:
    admin, user = users_serve
    listen = f"127.0.0.1:{reserved_port()}"
    with pytest.raises(DemoError) as refused:
        run_demo(0.1, listen=listen, admin=admin, state_dir=tmp_path / "demo", out=io.StringIO())
    message = str(refused.value)
    assert message.startswith(f"{admin} is in use by another process"), message
    assert "zerodown demo --listen HOST:PORT --admin HOST:PORT" in message
    assert user.releases("web") == []  # nothing was deployed into the user's service
    assert not (tmp_path / "demo" / SERVE_LOG).exists()  # and no demo daemon started


def test_demo_drives_only_its_own_child(
    tmp_path: Path, users_serve: tuple[str, AdminClient]
) -> None:
    # The admin address was free when checked, and another daemon answers
    # there by the time the demo's child should: the pid tells them apart.
    _, user = users_serve
    child = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(DemoError) as refused:
            _wait_ready(child, user, tmp_path / SERVE_LOG)
    finally:
        stop_process(child, 0)
    other = user.health()["pid"]
    assert str(refused.value).startswith(
        f"{user.base_url} is answered by another zerodown (pid {other}), "
        f"not the demo's own (pid {child.pid})"
    )
    assert user.releases("web") == []


def _processes(ports: tuple[int, int]) -> list[str]:
    """Command lines of this demo's apps still running: those on a port of its range
    (another test's demo, running meanwhile, has ports of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().decode().split("\0")
                port = args[args.index("--port") + 1] if "--port" in args else ""
                if "zerodown.demo" in args and port.isdigit() and ports[0] <= int(port) <= ports[1]:
                    found.append(" ".join(args))
    return found


def assert_refused(address: str) -> None:
    host, port = address.split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=DEADLINE)


def test_error_rate_for_applies_only_to_the_named_version() -> None:
    flags = ("--error-rate-for", "v5=1.0")
    broken, healthy = spawn_app("v5", *flags), spawn_app("v4", *flags)
    try:
        statuses = {
            app.version: [_get_status(app.port, "/") for _ in range(5)] for app in (broken, healthy)
        }
    finally:
        broken.stop()
        healthy.stop()
    assert statuses == {"v5": [500] * 5, "v4": [200] * 5}


def _get_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()
