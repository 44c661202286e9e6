"""Every failure of a deploy's instances says what happened (issue 9).

The orchestrator with the real ProcessRuntime and real processes (tiny
`python -c` apps and `python -m http.server`), a SQLite store in memory and
a data plane that only records tables: an app that ignores `{port}`, a port
another program holds, a crash at start, an abort, a daemon that died
mid-deploy, a crash loop. Deadlines bound hangs only; assertions are on the
outcome, the reason's contents, release statuses, events and `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from harness import until
from zerodown.config import ServiceConfig, parse_config
from zerodown.dataplane.base import DataPlane
from zerodown.deploy import gate
from zerodown.deploy.contract import DeployView
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.routing import DrainResult, RoutingTable
from zerodown.runtime import Backoff, ProcessRuntime, can_listen
from zerodown.runtime.base import Runtime
from zerodown.stats import Stats
from zerodown.store.base import Store
from zerodown.store.sqlite import SqliteStore

DEADLINE = 20.0  # bounds a hang only
PY = shlex.quote(sys.executable)
# Answers 200 on the port it is given (argv), and says so on stdout.
SERVE = (
    # socketserver's TCPServer: http.server's looks up the host's name first.
    "import http.server as h, socketserver as ss, sys; "
    "s = ss.TCPServer(('127.0.0.1', int(sys.argv[1])), h.SimpleHTTPRequestHandler); "
    "print('serving', flush=True); s.serve_forever()"
)
# Exits 3 when ./crash exists (after saying why), else serves as SERVE does.
SERVE_UNLESS_CRASH = (
    "import os, sys\n"
    "if os.path.exists('crash'):\n"
    "    print('crash file present', flush=True); sys.exit(3)\n" + SERVE.replace("; ", "\n")
)


class TableOnly(DataPlane):
    """Keeps the last table; drains are instant (no traffic in these tests)."""

    def __init__(self) -> None:
        self.table = RoutingTable(services=())

    async def apply(self, table: RoutingTable) -> None:
        self.table = table

    def routing(self) -> RoutingTable:
        return self.table

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        return DrainResult(service, address, True, 0, 0.0)

    async def stats(self) -> Stats:
        return Stats(services={}, connections=0, rejected={})

    async def prometheus(self) -> str:
        return ""


def python(code: str, *args: str) -> str:
    """A `command` running `python -c code args`; braces in code kept literal."""
    literal = code.replace("{", "{{").replace("}", "}}")
    return " ".join([PY, "-c", shlex.quote(literal), *args])


def config(command: str, ports: tuple[int, int], cwd: Path, **keys: str) -> str:
    (cwd / "health").write_text("ok")  # what SERVE answers on the default check, /health
    lines = [
        "[services.web]",
        f"command = {json.dumps(command)}",
        f'ports = "{ports[0]}-{ports[1]}"',
        f"cwd = {json.dumps(str(cwd))}",
        'stop_grace = "2s"',
        *(f"{key} = {json.dumps(value)}" for key, value in keys.items()),
    ]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ports() -> tuple[int, int]:
    first = random.randrange(30000, 32768 - 50)
    return first, first + 49


def port_after(words: str, reason: str) -> int:
    """The port a failure names after `words` (the runtime's cursor starts anywhere)."""
    found = re.search(re.escape(words) + r"(\d+)", reason)
    assert found, reason
    return int(found[1])


def in_range(port: int, ports: tuple[int, int]) -> bool:
    return ports[0] <= port <= ports[1]


@pytest.fixture
def run() -> Iterator[Any]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield lambda coro: runner.run(asyncio.wait_for(coro, DEADLINE * 2))


@contextlib.asynccontextmanager
async def orchestrator(
    text: str,
    state_dir: Path,
    store: Store | None = None,
    backoff: Callable[[], Backoff] = Backoff,
    **runtime: Any,
) -> AsyncIterator[Orchestrator]:
    def runtime_for(name: str, service: ServiceConfig) -> Runtime:
        return ProcessRuntime(state_dir, port_range=service.ports, **runtime)

    store = store or SqliteStore(":memory:")
    orch = Orchestrator(parse_config(text), TableOnly(), store, runtime_for, backoff=backoff)
    await orch.start()
    try:
        yield orch
    finally:
        await orch.close(stop_instances=True)


async def deploy(orch: Orchestrator, version: str) -> DeployView:
    view = await orch.wait(await orch.deploy("web", version), DEADLINE)
    assert view is not None, view
    assert view.outcome is not None, view
    return view


def releases(orch: Orchestrator) -> dict[str, str]:
    return {r.version: r.status for r in orch.releases("web")}


def events(orch: Orchestrator, kind: str) -> list[dict[str, Any]]:
    found = orch.store.events(0, "web", limit=10_000)
    return [json.loads(e.data_json) for e in found if e.kind == kind]


@contextlib.contextmanager
def stranger(port: int, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another program answering 200 on `port` (/health too, from `cwd`)."""
    argv = [sys.executable, "-c", SERVE, str(port)]
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + DEADLINE
        while can_listen("127.0.0.1", port):
            assert proc.poll() is None, "stranger did not listen"
            assert time.monotonic() < deadline, "stranger did not listen"
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


# -- item 1: the gate trusts only the instance's own processes ------------------------


def test_an_app_that_ignores_its_port_fails_fast_naming_the_port(
    run: Any, ports: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate, "LISTEN_ELSEWHERE_GRACE", 0.5, raising=False)
    elsewhere = free_port()  # its "default port": where it listens whatever {port} says
    text = config(python(SERVE, str(elsewhere)), ports, tmp_path, deploy_timeout="60s")

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state") as orch:
            began = time.monotonic()
            view = await deploy(orch, "v1")
            took = time.monotonic() - began
            assert view.outcome == "failed", view
            reason = view.reason or ""
            assert f"listens on port {elsewhere}, not on its port " in reason, reason
            assert in_range(port_after("not on its port ", reason), ports), reason
            assert "does `command` use {port} (or $PORT)?" in reason, reason
            assert took < 15, took  # the gate's deadline is 60 s
            assert releases(orch) == {"v1": "failed"}

    run(body())


def test_a_port_held_by_another_program_fails_the_deploy_naming_it(
    run: Any, tmp_path: Path
) -> None:
    port = free_port()
    # The allocator's probe is told the port is free: the other program took
    # it after the check (a race), and the app itself listens nowhere.
    text = config(python("import time; time.sleep(60)"), (port, port + 2), tmp_path)

    async def body() -> None:
        with stranger(port, tmp_path) as other:
            async with orchestrator(text, tmp_path / "state", probe=lambda h, p: p == port) as orch:
                view = await deploy(orch, "v1")
                # Before: the stranger's 200 passed the gate and took the traffic.
                assert view.outcome == "failed", view
                reason = view.reason or ""
                assert f"port {port} of instance web-v1-" in reason, reason
                assert f"held by another program, pid {other.pid} (" in reason, reason
                assert "socketserver" in reason, reason
                assert "(or $PORT)" in reason, reason
                assert orch.dataplane.routing().services[0].stable.targets == ()

    run(body())


def test_an_app_that_never_listens_times_out_with_the_hint(
    run: Any, ports: tuple[int, int], tmp_path: Path
) -> None:
    text = config(python("import time; time.sleep(60)"), ports, tmp_path, deploy_timeout="1s")

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state") as orch:
            view = await deploy(orch, "v1")
            assert view.outcome == "failed", view
            assert (view.reason or "").startswith("not healthy within 1s: web-v1-"), view
            reason = view.reason or ""
            hint = ": does `command` use {port} (or $PORT)?"
            assert f"never listened on its port {port_after('its port ', reason)}{hint}" in reason
            assert in_range(port_after("its port ", reason), ports), reason

    run(body())


def test_port_and_version_reach_the_app_environment(
    run: Any, ports: tuple[int, int], tmp_path: Path
) -> None:
    # What docs/config.md promises beside `command`: $PORT and $ZERODOWN_VERSION.
    code = "import os, sys; sys.argv[1:] = [os.environ['PORT']]; " + SERVE
    code = code.replace("print('serving'", "print(os.environ['ZERODOWN_VERSION']")
    text = config(python(code), ports, tmp_path)

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state") as orch:
            view = await deploy(orch, "v1.2")
            assert view.outcome == "succeeded", view
            [instance] = orch.fleets["web"].instances
            log = tmp_path / "state" / "logs" / "web" / "v1.2" / f"{instance.id}.log"
            assert log.read_text().splitlines()[0] == "v1.2"

    run(body())


# -- item 2: a crash at start says how, and shows the end of its log ---------------


@pytest.mark.parametrize(
    ("ending", "how"),
    [("os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV"), ("sys.exit(3)", "exit 3")],
)
def test_a_crash_in_the_gate_names_its_exit_and_shows_its_log(
    run: Any, ports: tuple[int, int], tmp_path: Path, ending: str, how: str
) -> None:
    # Up long enough to be past start(), in its health gate, then it dies.
    code = (
        "import os, signal, sys, time\n"
        "for n in range(1, 16): print('line', n)\n"
        "sys.stdout.flush(); time.sleep(0.5)\n" + ending
    )
    text = config(python(code), ports, tmp_path)

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state") as orch:
            view = await deploy(orch, "v1")
            assert view.outcome == "failed", view
            reason = view.reason or ""
            assert "exited during its health gate" in reason or "crashed" in reason, reason
            assert f"({how})" in reason, reason
            logs = list((tmp_path / "state" / "logs" / "web" / "v1").iterdir())
            assert len(logs) == 1, reason
            assert f"last 10 lines of {logs[0]}:" in reason, reason
            shown = [line.strip() for line in reason.splitlines()[1:]]
            assert shown == [f"line {n}" for n in range(6, 16)], reason

    run(body())


# -- item 3: releases read how their deploy ended -----------------------------------


def test_an_aborted_deploy_reads_aborted_not_new(
    run: Any, ports: tuple[int, int], tmp_path: Path
) -> None:
    text = config(python("import time; time.sleep(60)"), ports, tmp_path, deploy_timeout="30s")

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state") as orch:
            deploy_id = await orch.deploy("web", "v1")
            await until(lambda: orch.deployments["web"].state == "gating", "gating", DEADLINE)
            orch.abort("web")
            view = await orch.wait(deploy_id, DEADLINE)
            assert view is not None, view
            assert (view.outcome, view.reason) == ("aborted", "aborted by request"), view
            assert releases(orch) == {"v1": "aborted"}

    run(body())


def test_a_deploy_the_daemon_died_in_reads_rolled_back(run: Any, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "zerodown.sqlite3")
    command = python("import time; time.sleep(60)")
    text = config(command, (30000, 30049), tmp_path)
    orch = Orchestrator(parse_config(text), TableOnly(), store, lambda *_: ProcessRuntime(tmp_path))
    orch._new_release(orch.fleets["web"], "v1")
    died_in = store.begin_deploy("web", "v1", "rolling", "[]")

    async def body() -> None:
        await orch.start()
        await orch.close(stop_instances=True)

    run(body())
    record = store.deploy(died_in)
    assert record is not None, record
    assert record.outcome == "rolled_back", record
    assert releases(orch) == {"v1": "rolled_back"}


def test_a_deploy_the_daemon_died_in_after_the_switch_reads_succeeded(
    run: Any, ports: tuple[int, int], tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "zerodown.sqlite3")
    text = config(python(SERVE, "{port}"), ports, tmp_path)

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state", store) as orch:
            orch._new_release(orch.fleets["web"], "v2")
            died_in = store.begin_deploy("web", "v2", "rolling", "[]")
            store.set_current("web", "v2")  # its last step was recorded, its outcome not
        async with orchestrator(text, tmp_path / "state", store) as orch:
            record = store.deploy(died_in)
            assert record is not None, record
            assert record.outcome == "succeeded", record
            assert releases(orch) == {"v2": "current"}
            assert [i.state for i in orch.fleets["web"].instances] == ["ready"]

    run(body())


# -- item 4: a crash loop is said, in events and status -----------------------------


def test_a_crash_loop_of_the_current_release_is_in_events_and_status(
    run: Any, ports: tuple[int, int], tmp_path: Path
) -> None:
    text = config(python(SERVE_UNLESS_CRASH, "{port}"), ports, tmp_path)

    def short() -> Backoff:
        return Backoff(base=0.01, max=0.05, crash_loop_count=3)

    async def body() -> None:
        async with orchestrator(text, tmp_path / "state", backoff=short) as orch:
            assert (await deploy(orch, "v1")).outcome == "succeeded"
            (tmp_path / "crash").touch()  # every restart now exits 3 at once
            [instance] = orch.fleets["web"].instances
            assert instance.pid is not None
            os.kill(instance.pid, signal.SIGKILL)
            await until(
                lambda: orch.status("web")[0].crash_loop is not None, "a crash loop", DEADLINE
            )
            shown = orch.status("web")[0].crash_loop
            assert shown is not None
            [loop] = events(orch, "crash_loop")
            crashed = events(orch, "instance_crashed")
            assert crashed[0]["how"] == "killed by SIGKILL", crashed
            assert loop["crashes"] == 3, loop
            assert loop["serving"] == 0, loop
            assert shown.message == loop["reason"]
            assert shown.next_retry == pytest.approx(shown.since + 60, abs=1), shown
            assert shown.message.startswith(
                "web v1 crashed 3 times within 60s: retrying once every 60s; "
                "0 of 1 instances serve."
            ), shown.message
            assert "(exit 3)" in shown.message, shown
            assert "crash file present" in shown.message, shown

    run(body())
