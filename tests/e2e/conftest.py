"""End-to-end harness: `zerodown serve` as a real process deploying real demo
apps, zerodown's own load generator in front of it, and /proc as the witness
that nothing was left running.

Every app instance a test's daemon starts carries `ZD_TEST_MARK=<uuid>` in its
environment (from the service's `env` table), so a scan of /proc/*/environ
finds exactly this test's processes, whichever daemon (or none) owns them.
Teardown stops the daemon with SIGTERM and then fails the test if any of them
is still alive (after killing it, so one failure does not leak into others).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from harness import reserved_port, reserved_ports
from zerodown.cli.client import AdminClient
from zerodown.verify import LoadSpec, run_load
from zerodown.verify.load import LoadResult, Sample
from zerodown.verify.report import Report

MARK_ENV = "ZD_TEST_MARK"
INSTANCES = 2
STARTUP_DELAY = 2  # seconds: the app "takes 2 s to start"
SLOW_STARTUP_DELAY = 4  # seconds the release labelled "slow" takes (see WRAPPER)
DAEMON_START_TIMEOUT = 15.0  # from spawn to the admin API and the proxy accepting
DAEMON_STOP_TIMEOUT = 40.0  # SIGTERM to exit: proxy shutdown, then instances' stop_grace
CLI_TIMEOUT = 120.0  # one CLI call, a followed deploy included
LEFTOVER_GRACE = 5.0  # after the daemon exited, for killed processes to vanish from /proc
POLL = 0.1
LOAD_CONCURRENCY = 8
# Requests per second over all load connections: continuous, but leaving the
# second core to the apps that start during a deploy (a closed loop as fast as
# it goes would starve their start-up on this 2-core machine).
LOAD_RATE = 200.0
LOAD_TIMEOUT = 20.0  # per request; above recreate.max_pause so a held request is not a timeout
# Instance ports: a window per test, reserved against other test processes
# (harness.reserved_ports: two random windows could overlap), below Linux's ephemeral range
# (32768-60999 here, net.ipv4.ip_local_port_range). Inside it, an outgoing
# connection (the proxy's, the load's) may take a port between the runtime's
# "is it free?" and the app's bind 2 s later, and the app exits with
# "address already in use". zerodown's default range (20000-29999) is below
# it too.
PORT_WINDOW = 200  # the instances' `ports` range, per test
# Every data plane a deploy test runs through: the embedded proxy, and the
# real HAProxy and nginx that zerodown starts (on the cluster's free ports).
DATAPLANES = ("embedded", "haproxy", "nginx")
DRIVEN = ("haproxy", "nginx")  # the proxies zerodown drives as processes of their own

# The demo app with a knob per release, picked by the version label the
# runtime puts in the environment (with the port), as the issue specifies.
WRAPPER = """\
#!/bin/sh
case "$ZERODOWN_VERSION" in
  never) knob="--startup-delay 1000" ;;  # never listens: never passes a health check
  flaky) knob="--error-rate 0.3" ;;  # fails 30 % of requests
  slow) knob="--startup-delay {slow}" ;;  # a longer start: a window with no step in it
  *) knob="" ;;
esac
exec {python} -m zerodown.demo --port "$PORT" --version "$ZERODOWN_VERSION" \\
  --startup-delay {delay} $knob
"""


def free_port() -> int:
    # Not port 0: the daemon binds it later (and again after each restart),
    # and a port from the ephemeral range may be any connection's by then.
    return reserved_port()


def through(dataplane: str) -> dict[str, str]:
    """The `[proxy]` keys (for make_cluster's `proxy`) that pick `dataplane`;
    "nginx-reload": nginx with a new configuration per deploy step, instead
    of its default here (the Lua balancer's table, installed by make test)."""
    if dataplane == "nginx-reload":
        return {"dataplane": toml_str("nginx"), "nginx": '{ upstreams = "reload" }'}
    return {"dataplane": toml_str(dataplane)}


def toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def demo_command(*flags: str) -> str:
    base = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    return " ".join([base, "--startup-delay", str(STARTUP_DELAY), *flags])


# -- processes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppProcess:
    pid: int
    version: str  # ZERODOWN_VERSION, which the runtime sets for every instance


def marked_processes(mark: str) -> list[AppProcess]:
    """Live processes whose environment holds this test's mark (zombies have none)."""
    found = []
    needle = f"{MARK_ENV}={mark}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle not in environ:
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
        found.append(AppProcess(int(entry.name), env.get("ZERODOWN_VERSION", "?")))
    return found


def alive(pid: int) -> bool:
    """Running, as /proc tells: a zombie (exited, not reaped yet) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`, from /proc (the group
    outlives its leader: nginx's workers, once their master was killed alone)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def versions_running(mark: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for proc in marked_processes(mark):
        counts[proc.version] = counts.get(proc.version, 0) + 1
    return counts


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {value!r})")
        time.sleep(POLL)


# -- the daemon and its CLI ----------------------------------------------------------


class Cluster:
    """One `zerodown serve` with one deployable service `web`, driven through the CLI."""

    def __init__(
        self, root: Path, mark: str, service: dict[str, str], proxy: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.mark = mark
        self.listen = free_port()
        self.admin = free_port()
        self.config = root / "zerodown.toml"
        self.log_path = root / "daemon.log"
        self.service = service
        self.proxy = proxy or {}  # extra `[proxy]` keys, as key -> TOML value
        self.daemon: subprocess.Popen[bytes] | None = None
        # A hot restart's new generation: not our child, so known by pid only.
        self.successor: int | None = None
        self.env = {k: v for k, v in os.environ.items() if k != "ZERODOWN_TOKEN"}
        self.config.write_text(self._toml())

    def __repr__(self) -> str:
        return f"<Cluster {self.root.name} proxy={self.listen} admin={self.admin}>"

    def _toml(self) -> str:
        lines = [
            "[proxy]",
            f'listen = ["127.0.0.1:{self.listen}"]',
            f'admin = "127.0.0.1:{self.admin}"',
            f"state_dir = {toml_str(str(self.root / 'state'))}",
            'shutdown_timeout = "10s"',
            *(f"{key} = {value}" for key, value in self.proxy.items()),
            "",
            "[services.web]",
            *(f"{key} = {value}" for key, value in self.service.items()),
        ]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen}"

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "zerodown", "serve", "-c", str(self.config)],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # SIGKILL of the daemon reaches it alone
            )
        for port in (self.admin, self.listen):
            listening = functools.partial(self._listening, port)
            wait_for(f"daemon listening on {port}", listening, DAEMON_START_TIMEOUT)

    def _listening(self, port: int) -> bool:
        assert self.daemon is not None
        if self.daemon.poll() is not None:
            raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.log_tail()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def kill_daemon(self) -> None:
        """SIGKILL, as a crash or an OOM kill would; the apps live on in their sessions."""
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait()  # reaped, as init would: a zombie would still look alive

    def stop_daemon(self) -> int | None:
        """SIGTERM and wait; the exit code, or None when it had to be killed."""
        if self.successor is not None:
            return self._stop_successor(self.successor)
        if self.daemon is None or self.daemon.poll() is not None:
            return self.daemon.returncode if self.daemon else 0
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return self.daemon.wait(DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill_daemon()
            return None

    def _stop_successor(self, pid: int) -> int | None:
        """SIGTERM a generation we did not start; 0 once it is gone, None if it had to be killed."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DAEMON_STOP_TIMEOUT
        while alive(pid):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return None
            time.sleep(POLL)
        return 0

    def _recorded_pids(self) -> list[int]:
        """The data planes' pids in this cluster's pid files, running or not."""
        state = self.root / "state"
        found = []
        for pid_file in (
            state / "dataplane.pid",
            state / "haproxy" / "haproxy.pid",
            state / "nginx" / "nginx.pid",
        ):
            with contextlib.suppress(OSError, ValueError):
                found.append(int(pid_file.read_text()))
        return found

    def dataplane_pid(self) -> int | None:
        """The data plane serving this cluster's state directory, if one runs:
        the embedded one's host, or the HAProxy or nginx master."""
        return next((pid for pid in self._recorded_pids() if alive(pid)), None)

    def dataplane_left(self) -> list[int]:
        """Processes of the recorded data planes' groups still running, their
        leader dead or alive (a master killed alone leaves its workers)."""
        return [p for pid in self._recorded_pids() for p in group_members(pid)]

    def kill_dataplane(self) -> None:
        """SIGKILL the data-plane host and its workers: each recorded pid's
        process group (a daemonized master leads its workers' group)."""
        for pid in self._recorded_pids():
            if group_members(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- the CLI -----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zerodown", *args, "-c", str(self.config)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "zerodown", *args, "-c", str(self.config)],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def deploy(self, version: str, *flags: str) -> tuple[int, dict[str, Any]]:
        """`zerodown deploy web VERSION --json`, followed to its end: exit code and DeployView."""
        done = self.cli("deploy", "web", version, "--json", *flags)
        return done.returncode, self._view(done)

    def deploy_ok(self, version: str, *flags: str) -> dict[str, Any]:
        code, view = self.deploy(version, *flags)
        assert code == 0, f"deploy {version}: exit {code}, {view}\n{self.log_tail()}"
        assert view["outcome"] == "succeeded", view
        return view

    def _view(self, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        try:
            view: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise AssertionError(
                f"exit {done.returncode}, no JSON: {done.stdout!r} {done.stderr!r}"
            ) from None
        return view

    @property
    def client(self) -> AdminClient:
        """The admin API, as the CLI calls it, from this process (with the
        daemon's token, as the CLI takes it from ZERODOWN_TOKEN)."""
        return AdminClient(f"http://127.0.0.1:{self.admin}", self.env.get("ZERODOWN_TOKEN"))

    # Polled in loops: the admin API in-process, what `zerodown status web
    # --json` prints, without a CLI process (0.6 s of CPU each) per look,
    # taken from the apps starting beside it on 2 cores.
    def status(self) -> dict[str, Any]:
        return self.client.status("web")[0]

    def releases(self) -> dict[str, str]:
        """version -> status, as `zerodown releases web --json` lists them."""
        return {r["version"]: r["status"] for r in self.client.releases("web")}

    def get(self, path: str = "/") -> tuple[int, str | None]:
        """One request through the proxy: status and X-Version."""
        conn = http.client.HTTPConnection("127.0.0.1", self.listen, timeout=LOAD_TIMEOUT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("X-Version")
        finally:
            conn.close()

    # -- what runs -----------------------------------------------------------------------

    def processes(self) -> list[AppProcess]:
        return marked_processes(self.mark)

    def running(self) -> dict[str, int]:
        return versions_running(self.mark)

    def settled(self, version: str) -> bool:
        """`instances` ready instances of `version` and nothing else, as the daemon
        reports them and as /proc has them."""
        status = self.status()
        seen = [(i["version"], i["state"]) for i in status["instances"]]
        return (
            status["deploying"] is None
            and status["current"] == version
            and seen == [(version, "ready")] * INSTANCES
            and self.running() == {version: INSTANCES}
        )


def default_service(mark: str) -> dict[str, str]:
    """The `[services.web]` table as key -> TOML value; tests override entries."""
    # Reserved against every other test process: two random windows could overlap.
    low, _ = reserved_ports(PORT_WINDOW)
    return {
        "command": toml_str(demo_command()),
        "instances": str(INSTANCES),
        "strategy": '"rolling"',
        "env": f'{{ {MARK_ENV} = "{mark}" }}',
        "health": '{ path = "/health", interval = "200ms", rise = 1 }',
        "ports": toml_str(f"{low}-{low + PORT_WINDOW - 1}"),
        # Above the long requests (2 s), so a drain waits for them instead of cutting them.
        "drain_timeout": '"10s"',
        "stop_grace": '"3s"',
        "deploy_timeout": '"20s"',
        "blue_green": '{ scale_down_delay = "1s" }',
        # Effects that matter here are large: a step of 1 s sees tens of
        # canary requests, and the judge passes a healthy canary only once
        # its sample rules out the smallest effect that matters.
        "canary": (
            '{ steps = [{ weight = 20, pause = "1s" }, { weight = 50, pause = "1s" }], '
            'min_requests = 20, min_error_increase = 0.2, min_latency_shift = "50ms" }'
        ),
        "recreate": '{ max_pause = "15s" }',
    }


def wrapper_command(root: Path) -> str:
    """A service command whose version label picks a failure knob (see WRAPPER)."""
    script = root / "app.sh"
    text = WRAPPER.format(python=sys.executable, delay=STARTUP_DELAY, slow=SLOW_STARTUP_DELAY)
    script.write_text(text)
    script.chmod(0o755)
    return toml_str(str(script))


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """make_cluster(first="v1", **service_overrides): a running daemon whose first
    deploy (`first`, via the CLI) has succeeded. Overrides replace TOML values of
    `[services.web]`; `proxy` adds `[proxy]` keys, `env` variables of the
    daemon's environment; `wrapper=True` uses the knob script as the command."""
    clusters: list[Cluster] = []

    def make(
        first: str | None = "v1",
        wrapper: bool = False,
        proxy: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        **overrides: str,
    ) -> Cluster:
        root = tmp_path / f"cluster{len(clusters)}"
        root.mkdir()
        mark = uuid.uuid4().hex
        service = default_service(mark) | overrides
        if wrapper:
            service["command"] = wrapper_command(root)
        cluster = Cluster(root, mark, service, proxy)
        cluster.env.update(env or {})
        clusters.append(cluster)
        cluster.start()
        if first is not None:
            cluster.deploy_ok(first)
        return cluster

    yield make
    problems = []
    for cluster in clusters:
        code = cluster.stop_daemon()
        if code != 0:
            problems.append(f"{cluster}: daemon exit {code} on SIGTERM\n{cluster.log_tail()}")
        # A daemon stopped by SIGTERM stops its data plane; one that was killed
        # (and not started again) leaves it serving, by design: clean it up.
        deadline = time.monotonic() + LEFTOVER_GRACE
        while cluster.dataplane_left() and time.monotonic() < deadline:
            time.sleep(POLL)
        if left_running := cluster.dataplane_left():
            if code == 0:
                problems.append(
                    f"{cluster}: data plane left running after a clean stop: {left_running}"
                )
            cluster.kill_dataplane()
        deadline = time.monotonic() + LEFTOVER_GRACE
        while (left := cluster.processes()) and time.monotonic() < deadline:
            time.sleep(POLL)
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        if left:
            problems.append(f"{cluster}: processes left after the daemon stopped: {left}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Cluster:
    return make_cluster()


# -- load ------------------------------------------------------------------------------


class Load:
    """zerodown's load generator on a thread with its own event loop, for a `with` block.

    After the block, `result` holds every sample and `report` the aggregate.
    """

    def __init__(self, url: str, **spec: Any) -> None:
        spec.setdefault("concurrency", LOAD_CONCURRENCY)
        spec.setdefault("rate", LOAD_RATE)
        spec.setdefault("timeout", LOAD_TIMEOUT)
        self.spec = LoadSpec(url=url, **spec)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.spec.timeout + 10)
        if kind is None and self._error is not None:
            raise self._error

    def _main(self) -> None:
        async def go() -> LoadResult:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            return await run_load(self.spec, self._stop)

        try:
            self._result = asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which raises it
            self._error = exc
            self._ready.set()

    @property
    def result(self) -> LoadResult:
        assert self._result is not None, f"the load did not finish: {self._error!r}"
        return self._result

    @property
    def report(self) -> Report:
        return Report.from_result(self.result)

    def wall(self, sample: Sample) -> tuple[float, float]:
        """A sample's start and end on the wall clock (as the daemon's journal times)."""
        start = self.result.started_at + sample.start
        return start, start + sample.latency


def served_between(load: Load, start: float, end: float) -> int:
    """Requests answered 2xx that started within [start, end] on the wall clock."""
    return sum(
        1
        for sample in load.result.samples
        if sample.failure is None and start <= load.wall(sample)[0] <= end
    )


def assert_no_failures(load: Load) -> Report:
    report = load.report
    failed = [s for s in load.result.samples if s.failure is not None]
    assert report.failed == 0, f"{report.summary()}\nfirst failures: {failed[:10]}"
    assert report.total > 0, "the load sent nothing"
    return report
