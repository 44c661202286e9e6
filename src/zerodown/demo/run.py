"""`zerodown demo`: the demo app behind the embedded proxy, on one machine.

Until deploys exist this is the plain load balancer: two instances of the demo
app (v1) on free ports and `zerodown serve` in front of them, with a config
written to a temporary directory. Ctrl-C (or SIGTERM) stops the proxy first,
so no client sees an instance vanish behind it, then the instances.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from zerodown.demo.process import AppProcess, DemoError, describe, spawn_app, stop_process
from zerodown.routing import parse_address

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN = "127.0.0.1:9900"
DEMO_VERSION = "v1"
DEMO_INSTANCES = 2
READY_TIMEOUT = 15.0  # from starting `zerodown serve` to its first 200 through the proxy
PROXY_STOP_TIMEOUT = 35.0  # above the proxy's own graceful-stop deadline (30 s)
POLL_INTERVAL = 0.1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_demo(
    duration: float | None = None,
    *,
    listen: str = DEFAULT_LISTEN,
    admin: str = DEFAULT_ADMIN,
    instances: int = DEMO_INSTANCES,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> None:
    """Run until Ctrl-C/SIGTERM, `duration` seconds, or `stop` is set; then stop everything.

    Raises DemoError when something does not start or dies while running.
    """
    out = out or sys.stdout
    apps: list[AppProcess] = []
    proxy: subprocess.Popen[bytes] | None = None
    with _interrupt_on_signals(), tempfile.TemporaryDirectory(prefix="zerodown-demo-") as tmp:
        try:
            for _ in range(instances):
                apps.append(spawn_app(DEMO_VERSION))
            config = Path(tmp, "zerodown.toml")
            upstreams = [app.address for app in apps]
            config.write_text(demo_config(listen, admin, upstreams, Path(tmp, "state")))
            proxy = _start_proxy(config)
            _wait_ready(proxy, listen)
            out.write(welcome(listen, admin, upstreams))
            out.flush()
            _watch([proxy, *(app.proc for app in apps)], duration, stop or threading.Event())
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a demo ends
        finally:
            _stop_all(proxy, apps)


def demo_config(listen: str, admin: str, upstreams: Sequence[str], state_dir: Path) -> str:
    """The zerodown.toml of the demo: one service in front of fixed upstreams."""
    quoted = ", ".join(json.dumps(address) for address in upstreams)  # a JSON string is TOML
    return (
        "[proxy]\n"
        f"listen = [{json.dumps(listen)}]\n"
        f"admin = {json.dumps(admin)}\n"
        f"state_dir = {json.dumps(str(state_dir))}\n"
        "\n"
        "[services.web]\n"
        'route = { host = "*", path = "/" }\n'
        f"upstreams = [{quoted}]\n"
        'health = { path = "/health", interval = "1s", timeout = "2s", rise = 2, fall = 3 }\n'
    )


def welcome(listen: str, admin: str, upstreams: Sequence[str]) -> str:
    proxy, admin_url = f"http://{listen}", f"http://{admin}"
    auth = ' -H "Authorization: Bearer $ZERODOWN_TOKEN"' if os.environ.get("ZERODOWN_TOKEN") else ""
    apps = ", ".join(f"{address} ({DEMO_VERSION})" for address in upstreams)
    return f"""
zerodown demo: {len(upstreams)} instances of the demo app behind the embedded proxy

  proxy      {proxy}
  admin API  {admin_url}
  instances  {apps}

Try:
  curl -i {proxy}/                       # X-Version says which release answered
  curl {proxy}/headers                   # what the app received (X-Forwarded-*, X-Request-ID)
  curl --data-binary hello {proxy}/echo  # bodies are streamed both ways
  curl{auth} {admin_url}/v1/routing
  curl{auth} {admin_url}/v1/stats
  curl{auth} {admin_url}/metrics

Ctrl-C stops everything.
"""


def _stop_all(proxy: subprocess.Popen[bytes] | None, apps: Sequence[AppProcess]) -> None:
    """The proxy first (it finishes its in-flight requests), then the instances."""
    procs = [app.proc for app in apps] if proxy is None else [proxy, *(app.proc for app in apps)]
    try:
        if proxy is not None:
            stop_process(proxy, PROXY_STOP_TIMEOUT)
        for app in apps:
            app.stop()
    except KeyboardInterrupt:  # a second Ctrl-C: no more patience
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _start_proxy(config: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "zerodown", "serve", "-c", str(config)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_ready(proxy: subprocess.Popen[bytes], listen: str) -> None:
    """Return once a GET / through the proxy answers 200; raise if it exits or takes too long."""
    host, port = parse_address(listen)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise DemoError(f"zerodown serve exited with code {proxy.returncode}")
        if _get_status(host, port) == 200:
            return
        time.sleep(POLL_INTERVAL)
    raise DemoError(f"the proxy on {listen} did not answer 200 within {READY_TIMEOUT:g}s")


def _get_status(host: str, port: int) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=1)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        return None  # not listening yet
    finally:
        conn.close()


def _watch(
    procs: Sequence[subprocess.Popen[bytes]], duration: float | None, stop: threading.Event
) -> None:
    """Wait for the end of the demo; a child that exits on its own ends it with DemoError."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.wait(POLL_INTERVAL):
        for proc in procs:
            if proc.poll() is not None:
                raise DemoError(f"{describe(proc)} exited with code {proc.returncode}")
        if deadline is not None and time.monotonic() >= deadline:
            return


@contextlib.contextmanager
def _interrupt_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so `kill` stops the children too.

    SIGINT is set explicitly: a shell without job control starts background
    jobs with it ignored, and Ctrl-C is how this demo is meant to end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
