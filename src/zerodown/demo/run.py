"""`zerodown demo`: the whole story on one machine, no configuration.

It writes a config for one service run from the demo app, starts
`zerodown serve`, deploys v1, then, each under `verify` load: v2 rolling,
v3 blue-green, v4 canary and v5, a release built to fail 30 % of its
requests, which the canary judge rolls back. It prints the report of each
deploy (and writes its JSON and chart), then keeps serving until Ctrl-C
(or `duration` seconds). Stopping stops the daemon, which stops the apps.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

import uvloop

from zerodown.cli.client import AdminClient, AdminError
from zerodown.config.strategy import StrategyName
from zerodown.demo.process import DemoError, describe, stop_process
from zerodown.verify import LoadSpec, Report
from zerodown.verify.around import deploy_and_wait
from zerodown.verify.proof import verify

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN = "127.0.0.1:9900"
DEFAULT_STATE_DIR = Path(".zerodown/demo")
READY_TIMEOUT = 15.0  # from starting `zerodown serve` to its admin API answering
FIRST_DEPLOY_TIMEOUT = 60.0
PROXY_STOP_TIMEOUT = 45.0  # above the proxy's graceful stop plus stopping the apps
POLL_INTERVAL = 0.1
# Where the demo's app instances listen: below the default instance range
# and the ephemeral range (see free_window).
DEMO_PORTS = (10000, 11999)
PORT_WINDOW = 20  # ports for 2 instances in up to 3 sets, with room for slow ones
SERVE_LOG = "serve.log"  # in state_dir: the daemon's output, kept for when it fails
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LOAD_CONCURRENCY = 8
FAILING_VERSION = "v5"


@dataclass(frozen=True, slots=True)
class Chapter:
    version: str
    strategy: StrategyName
    expect: str  # the outcome the story expects
    what: str


STORY = (
    Chapter("v2", "rolling", "succeeded", "rolling: one new instance in, one old out, twice"),
    Chapter("v3", "blue_green", "succeeded", "blue-green: the whole green set, then one switch"),
    Chapter("v4", "canary", "succeeded", "canary: 20 %, then 50 %, judged against stable"),
    Chapter(FAILING_VERSION, "canary", "rolled_back", "canary of a release failing 30 %"),
)


def run_demo(
    duration: float | None = None,
    *,
    listen: str = DEFAULT_LISTEN,
    admin: str = DEFAULT_ADMIN,
    state_dir: Path = DEFAULT_STATE_DIR,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    ports: tuple[int, int] | None = None,
) -> list[tuple[Chapter, str, Report]]:
    """Tell the story, then serve until Ctrl-C/SIGTERM, `duration`, or `stop`.

    Returns each chapter with the deploy's outcome and the load report.
    Raises DemoError when something does not start or dies while running.
    `ports` is where the app instances listen (default: a window free now,
    away from the range other daemons use by default).
    """
    out = out or sys.stdout
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "zerodown.toml"
    config.write_text(demo_config(listen, admin, state_dir, ports or free_window()))
    daemon: subprocess.Popen[bytes] | None = None
    told: list[tuple[Chapter, str, Report]] = []
    with _interrupt_on_signals():
        try:
            _refuse_busy(listen, admin)
            daemon = _start_daemon(config, state_dir)
            client = AdminClient(f"http://{admin}", os.environ.get("ZERODOWN_TOKEN") or None)
            _wait_ready(daemon, client, state_dir / SERVE_LOG)
            _first_deploy(client, out)
            for chapter in STORY:
                told.append(_tell(chapter, client, listen, state_dir, out))
            out.write(closing(listen, admin, told, state_dir))
            out.flush()
            _watch(daemon, duration, stop or threading.Event())
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a demo ends
        finally:
            if daemon is not None:
                _stop(daemon)
    return told


def demo_config(listen: str, admin: str, state_dir: Path, ports: tuple[int, int]) -> str:
    """One service, run from the demo app; v5 is built to fail 30 % of its requests."""
    command = (
        f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}} "
        f"--startup-delay 1 --error-rate-for {FAILING_VERSION}=0.3"
    )
    return f"""[proxy]
listen = [{json.dumps(listen)}]
admin = {json.dumps(admin)}
state_dir = {json.dumps(str(state_dir / "state"))}

[services.web]
route = {{ host = "*", path = "/" }}
command = {json.dumps(command)}
instances = 2
ports = "{ports[0]}-{ports[1]}"
health = {{ path = "/health", interval = "250ms", rise = 1 }}
drain_timeout = "10s"
stop_grace = "5s"
blue_green = {{ scale_down_delay = "3s" }}

[services.web.canary]
steps = [{{ weight = 20, pause = "3s" }}, {{ weight = 50, pause = "3s" }}]
min_requests = 50
"""


def free_window(size: int = PORT_WINDOW) -> tuple[int, int]:
    """`size` ports in a row, none in use now, at a random place in DEMO_PORTS.

    Not the default instance range (20000-29999): a `zerodown serve` of the
    user's, or another demo, takes ports there from the bottom up, and its
    app binds a port a second after the port was seen free (its startup
    delay), long enough for two daemons to pick the same one. Not the
    ephemeral range either, where every outgoing connection takes a port.
    """
    low, high = DEMO_PORTS
    starts = list(range(low, high - size + 1, size))
    random.shuffle(starts)
    for start in starts:
        if not any(_held(f"127.0.0.1:{port}") for port in range(start, start + size)):
            return start, start + size - 1
    raise DemoError(f"no {size} free ports in a row in {low}-{high}")


def _refuse_busy(listen: str, admin: str) -> None:
    """Refuse addresses another process holds, before starting anything.

    The demo deploys into whatever daemon answers on `admin`: a `zerodown
    serve` of the user's there would get the demo's releases (and hold the
    demo at its own manual pauses).
    """
    for name, address in (("admin", admin), ("listen", listen)):
        if _held(address):
            raise DemoError(
                f"{address} is in use by another process (a `zerodown serve` of yours?); "
                f"stop it, or give the demo other addresses: "
                f"zerodown demo --listen HOST:PORT --admin HOST:PORT (--{name} is {address})"
            )


def _held(address: str) -> bool:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _start_daemon(config: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "zerodown", "serve", "-c", str(config)]
    # This run's log only, so that its last line is why the daemon stopped.
    with (state_dir / SERVE_LOG).open("wb") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def _wait_ready(daemon: subprocess.Popen[bytes], client: AdminClient, log: Path) -> None:
    """Until the admin API answers, and answers as the demo's own child (by pid)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            why = _last_line(log)
            raise DemoError(f"zerodown serve exited with code {daemon.returncode}: {why}")
        with contextlib.suppress(AdminError):
            pid = client.health().get("pid")
            if pid == daemon.pid:
                return
            raise DemoError(
                f"{client.base_url} is answered by another zerodown (pid {pid}), "
                f"not the demo's own (pid {daemon.pid}); stop it, or give the demo other "
                "addresses: zerodown demo --listen HOST:PORT --admin HOST:PORT"
            )
        time.sleep(POLL_INTERVAL)
    raise DemoError(f"the admin API did not answer within {READY_TIMEOUT:g}s")


def _last_line(log: Path) -> str:
    """The daemon's last words (it says why it stops in one line), for the demo's error."""
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1].removeprefix("zerodown: ")
    return f"see {log}"


def _first_deploy(client: AdminClient, out: TextIO) -> None:
    out.write("zerodown demo: deploying web v1 (the first release: straight through the gate)\n")
    out.flush()
    view = client.wait(client.deploy("web", "v1"), FIRST_DEPLOY_TIMEOUT)
    if view.get("outcome") != "succeeded":
        raise DemoError(f"the first deploy did not succeed: {view.get('reason')}")


def _tell(
    chapter: Chapter, client: AdminClient, listen: str, state_dir: Path, out: TextIO
) -> tuple[Chapter, str, Report]:
    out.write(f"\n== web {chapter.version}: {chapter.what}\n")
    out.flush()
    spec = LoadSpec(f"http://{listen}/", concurrency=LOAD_CONCURRENCY, post_ratio=0.1)
    during = functools.partial(deploy_and_wait, client, "web", chapter.version, chapter.strategy)
    report, view = uvloop.run(verify(spec, during))
    outcome = str(_outcome(view))
    if view is not None:
        report = report.with_deploy(view)  # the chart's title and step marks
    prefix = state_dir / f"web-{chapter.version}"
    report.write(str(prefix))
    out.write(f"deploy: {outcome} (expected: {chapter.expect})")
    out.write(f" - {view.get('reason')}\n" if view and view.get("reason") else "\n")
    out.write(report.summary() + "\n")
    out.write(f"report: {prefix}.json, chart: {prefix}.svg\n")
    out.flush()
    return chapter, outcome, report


def _outcome(view: dict[str, Any] | None) -> str | None:
    return None if view is None else view.get("outcome")


def closing(listen: str, admin: str, told: list[tuple[Chapter, str, Report]], where: Path) -> str:
    rows = "\n".join(
        f"  {c.version:<4} {c.strategy:<11} {outcome:<12} {r.total:>7} requests, {r.failed} failed"
        for c, outcome, r in told
    )
    return f"""
zerodown demo: the story so far
{rows}
(the failed requests of {FAILING_VERSION} are its canary share until the judge saw enough)

  proxy      http://{listen}/
  admin API  http://{admin}/v1/status
  reports    {where}

Try: curl -i http://{listen}/   ·   zerodown -h   ·   Ctrl-C stops everything.
"""


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    try:
        stop_process(daemon, PROXY_STOP_TIMEOUT)
    except KeyboardInterrupt:  # a second Ctrl-C: no more patience
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def _watch(daemon: subprocess.Popen[bytes], duration: float | None, stop: threading.Event) -> None:
    """Wait for the end of the demo; the daemon exiting on its own ends it with DemoError."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.wait(POLL_INTERVAL):
        if daemon.poll() is not None:
            raise DemoError(f"{describe(daemon)} exited with code {daemon.returncode}")
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
