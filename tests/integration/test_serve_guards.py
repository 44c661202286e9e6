"""`zerodown serve` as a real process, against what a careless or hostile input
does to it: ids too big for the store, a signal in the middle of start-up.

Each test runs its own daemon on free ports with a temporary state_dir and
stops it with SIGTERM; waits are deadlines polled every few milliseconds.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

START_DEADLINE = 15.0  # a fresh interpreter on a busy 2-core machine
STOP_DEADLINE = 5.0  # SIGTERM to exit; shutdown_timeout below is 1 s
HUGE = 99999999999999999999999  # beyond SQLite's 64-bit INTEGER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(where: Path, admin: int, workers: int = 1) -> Path:
    config = where / "zerodown.toml"
    config.write_text(
        f"""
[proxy]
listen = ["127.0.0.1:{free_port()}"]
admin = "127.0.0.1:{admin}"
state_dir = "{where / "state"}"
workers = {workers}
shutdown_timeout = "1s"

[services.web]
upstreams = ["127.0.0.1:9"]
health = false
"""
    )
    return config


def serve(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def until(check: Callable[[], bool], what: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry))
    return found


def grandchildren(pid: int) -> set[int]:
    return {grandchild for child in children(pid) for grandchild in children(child)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=START_DEADLINE)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def admin_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One daemon for the module: these tests only read."""
    port = free_port()
    proc = serve(write_config(tmp_path_factory.mktemp("serve"), port))
    try:
        until(lambda: listening(port) or proc.poll() is not None, "the admin API", START_DEADLINE)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_DEADLINE)


# -- ids too big for the store ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/deploys/{HUGE}",
        f"/v1/deploys/{HUGE}/wait?timeout=0",
        f"/v1/deploys/-{HUGE}",
        f"/v1/deploys/{2**63}",
    ],
)
def test_a_deploy_id_beyond_the_store_is_404(admin_port: int, path: str) -> None:
    status, body = get(admin_port, path)
    assert status == 404, body
    assert b'"error":"no deploy ' in body


@pytest.mark.parametrize("query", [f"after={HUGE}", f"after={2**63}", "after=-1"])
def test_an_event_id_beyond_the_store_is_400(admin_port: int, query: str) -> None:
    status, body = get(admin_port, f"/v1/events?{query}")
    assert status == 400, body
    assert b'"field":"query.after"' in body
    # the largest storable id is a valid (empty) start; the store is still fine
    assert get(admin_port, f"/v1/deploys/{2**63 - 1}")[0] == 404
    assert get(admin_port, "/v1/deploys/1")[0] == 404


# -- a signal during start-up -------------------------------------------------------------

# Loaded by every Python process started with this directory on PYTHONPATH:
# a proxy worker then takes 30 s to start, so the daemon is surely mid-start
# when the signal comes (longer than START_DEADLINE + STOP_DEADLINE).
SLOW_WORKER = """
import sys, time
if "zerodown.dataplane.worker" in sys.orig_argv:
    time.sleep(30)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_serve_at_once_and_leaves_no_worker(
    tmp_path: Path, sig: signal.Signals
) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_WORKER)
    workers = 3
    path = os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")]))
    proc = serve(write_config(tmp_path, free_port(), workers), {"PYTHONPATH": path})
    spawned: set[int] = set()
    try:
        # serve -> its data-plane host -> the workers.
        until(
            lambda: len(grandchildren(proc.pid)) == workers, "the workers spawned", START_DEADLINE
        )
        spawned = grandchildren(proc.pid) | children(proc.pid)
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(STOP_DEADLINE)
        took = time.monotonic() - started
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert "proxy on" not in out  # it never announced itself as serving
        assert took < STOP_DEADLINE
        assert [pid for pid in spawned if alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in spawned:  # never left behind by a failing run, even orphaned
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
