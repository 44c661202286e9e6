"""`zerodown serve` as a user runs it: a real process, a TOML file, and the
tools people point at a proxy (curl, wrk, a WebSocket client)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from zerodown.demo.process import read_line, spawn_app

START_DEADLINE = 10.0


# "zerodown: proxy on 127.0.0.1:X; admin on 127.0.0.1:Y": the ports a serve on
# port 0 got (no port picked here and bound there later, which could race).
ANNOUNCE = re.compile(r"proxy on 127\.0\.0\.1:(\d+); admin on 127\.0\.0\.1:(\d+)")


def announced_ports(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    line = read_line(proc, START_DEADLINE)
    match = ANNOUNCE.search(line)
    assert match is not None, line
    return int(match[1]), int(match[2])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, object]]:
    apps = [spawn_app(version) for version in ("v1", "v2")]
    config = tmp_path / "zerodown.toml"
    upstreams = ", ".join(f'"{app.host}:{app.port}"' for app in apps)
    config.write_text(
        f"""
[proxy]
listen = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
state_dir = "{tmp_path / "state"}"

[services.web]
route = {{ host = "*", path = "/" }}
upstreams = [{upstreams}]
health = {{ path = "/health", interval = "200ms" }}
"""
    )
    env = {**os.environ, "ZERODOWN_TOKEN": "sekret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        listen, admin = announced_ports(proc)
        yield {"proc": proc, "listen": listen, "admin": admin}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(START_DEADLINE)
        for app in apps:
            app.stop()


def test_curl_reaches_both_versions_with_a_request_id(served: dict[str, object]) -> None:
    versions = []
    for _ in range(4):
        out = subprocess.run(
            ["curl", "-s", "-i", f"http://127.0.0.1:{served['listen']}/"],
            capture_output=True,
            check=True,
            timeout=START_DEADLINE,
        ).stdout.decode()
        assert out.startswith("HTTP/1.1 200")
        assert re.search(r"(?im)^x-request-id: \S+", out)
        versions.append(re.search(r"(?im)^x-version: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert sorted(versions) == ["v1", "v1", "v2", "v2"]


def test_wrk_load_has_no_errors(served: dict[str, object]) -> None:
    out = subprocess.run(
        ["wrk", "-t1", "-c20", "-d1s", f"http://127.0.0.1:{served['listen']}/"],
        capture_output=True,
        check=True,
        timeout=START_DEADLINE,
    ).stdout.decode()
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert total > 100
    assert "Non-2xx" not in out
    assert "Socket errors" not in out


def test_websocket_client_echoes_through_serve(served: dict[str, object]) -> None:
    async def talk() -> list[str | bytes]:
        url = f"ws://127.0.0.1:{served['listen']}/ws"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send("hello")
            first = await ws.recv()
            await ws.send(b"x" * 200_000)
            second = await ws.recv()
        return [first, second]

    first, second = asyncio.run(asyncio.wait_for(talk(), START_DEADLINE))
    assert first == "hello"
    assert second == b"x" * 200_000


def test_admin_needs_the_token_and_reports_stats(served: dict[str, object]) -> None:
    url = f"http://127.0.0.1:{served['admin']}/v1/stats"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=START_DEADLINE)
    assert refused.value.code == 401
    subprocess.run(
        ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{served['listen']}/"], check=True
    )
    request = urllib.request.Request(url, headers={"Authorization": "Bearer sekret"})
    with urllib.request.urlopen(request, timeout=START_DEADLINE) as response:
        stats = json.load(response)
    totals = stats["services"]["web"]["pools"]["stable"]["totals"]
    assert totals["requests"] >= 1
    assert totals["available"] == 2


def test_a_routing_table_without_the_configured_service_is_refused(
    served: dict[str, object],
) -> None:
    url = f"http://127.0.0.1:{served['admin']}/v1/routing"
    headers = {"Authorization": "Bearer sekret", "Content-Type": "application/json"}
    request = urllib.request.Request(url, b'{"services": []}', headers, method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=START_DEADLINE)
    assert refused.value.code == 400
    error = json.load(refused.value)["error"]
    assert error == "service 'web' is configured and may not be dropped or renamed"
    with urllib.request.urlopen(f"http://127.0.0.1:{served['listen']}/", timeout=5) as response:
        assert response.status == 200  # still routed: the table in force is the old one


def test_sigterm_stops_serve_with_exit_0(served: dict[str, object]) -> None:
    proc = served["proc"]
    assert isinstance(proc, subprocess.Popen)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(START_DEADLINE) == 0


def test_bad_config_names_the_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "zerodown.toml"
    config.write_text(
        '[proxy]\nlisten = ["127.0.0.1:0"]\n\n[services.web]\nupstreams = ["127.0.0.1:9"]\n'
        'health = { path = "/health", intervall = "1s" }\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        capture_output=True,
        timeout=START_DEADLINE,
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert str(config) in err
    assert "services.web.health.intervall" in err
    assert "interval" in err


# -- start-up failures: one line naming what and why, exit 2, no traceback ----------


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A port another process holds: bound to port 0 and listening, kept for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def serve_once(tmp_path: Path, listen: str, admin: str) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "zerodown.toml"
    config.write_text(
        f'[proxy]\nlisten = ["{listen}"]\nadmin = "{admin}"\n'
        f'state_dir = "{tmp_path / "state"}"\n\n'
        '[services.web]\nupstreams = ["127.0.0.1:9"]\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        capture_output=True,
        timeout=START_DEADLINE,
    )


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "Traceback" not in err, err
    assert "Errno" not in err, err
    return err.strip()


def test_a_busy_proxy_address_is_one_line_naming_it(tmp_path: Path, held: socket.socket) -> None:
    busy = f"127.0.0.1:{held.getsockname()[1]}"
    line = one_line(serve_once(tmp_path, busy, "127.0.0.1:0"))
    assert (
        line
        == f"zerodown: cannot listen on {busy}: address already in use (another process holds it)"
    )


def test_a_busy_admin_address_is_one_line_naming_it(tmp_path: Path, held: socket.socket) -> None:
    busy = f"127.0.0.1:{held.getsockname()[1]}"
    line = one_line(serve_once(tmp_path, "127.0.0.1:0", busy))
    assert (
        line
        == f"zerodown: cannot listen on {busy}: address already in use (another process holds it)"
    )


def test_an_address_not_of_this_machine_is_one_line(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no interface has it.
    line = one_line(serve_once(tmp_path, "192.0.2.7:8080", "127.0.0.1:0"))
    assert line == (
        "zerodown: cannot listen on 192.0.2.7:8080: "
        "address not available (no interface of this machine has it)"
    )


def test_any_other_start_up_os_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = tmp_path / "zerodown.toml"
    config.write_text(
        '[proxy]\nlisten = ["127.0.0.1:0"]\nadmin = "127.0.0.1:0"\n'
        f'state_dir = "{tmp_path / "file" / "state"}"\n\n'
        '[services.web]\nupstreams = ["127.0.0.1:9"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        capture_output=True,
        timeout=START_DEADLINE,
    )
    line = one_line(done)
    assert line == f"zerodown: cannot start: not a directory: {tmp_path / 'file' / 'state'}"
