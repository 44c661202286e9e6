"""ProcessRuntime with real processes: the demo app and tiny `python -c` commands.

Ports come from a random 200-port window below Linux's ephemeral range
(32768 and up), so neither another test run nor an outgoing connection is
likely to sit in it; the runtime's probe skips whatever still does.
Deadlines, not sleeps: every wait polls a condition up to DEADLINE, and the
assertions are on contents, counts and exit codes, never on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import uvloop

from zerodown.errors import DeployError
from zerodown.release import Instance, Release
from zerodown.runtime import (
    InstanceExited,
    NoFreePort,
    ProcessRuntime,
    RuntimeStartError,
    can_listen,
    procfs,
)
from zerodown.runtime.base import ExitReport
from zerodown.runtime.logs import RotatingLog

T = TypeVar("T")

DEADLINE = 10.0  # only bounds a hung wait; no assertion depends on it
POLL = 0.02
WINDOW = 200
PY = shlex.quote(sys.executable)
DEMO = f"{PY} -m zerodown.demo --port {{port}} --version {{version}}"
IDLE = "import time; time.sleep(100)"


class Run(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, T]) -> T: ...


class Make(Protocol):
    def __call__(self, **kwargs: Any) -> ProcessRuntime: ...


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Each test on uvloop (what `zerodown serve` runs) and on the stock loop."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        yield lambda coro: runner.run(asyncio.wait_for(coro, DEADLINE * 3))


@pytest.fixture
def window() -> tuple[int, int]:
    first = random.randrange(30000, 32768 - WINDOW)
    return first, first + WINDOW - 1


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make(state_dir: Path, window: tuple[int, int]) -> Iterator[Make]:
    """make(**kwargs): a ProcessRuntime on the test's window; whatever it started
    (even after close()) is killed after the test."""
    made: list[_Tracked] = []

    def new(**kwargs: Any) -> ProcessRuntime:
        kwargs.setdefault("port_range", window)
        made.append(_Tracked(state_dir, **kwargs))
        return made[-1]

    yield new
    for runtime in made:
        for pid, started in runtime.started:
            if procfs.is_running(pid, started):
                os.killpg(pid, signal.SIGKILL)


class _Tracked(ProcessRuntime):
    """Remembers (pid, start time) of everything it started, for the clean-up."""

    def __init__(self, state_dir: Path, **kwargs: Any) -> None:
        super().__init__(state_dir, **kwargs)
        self.started: list[tuple[int, float]] = []

    async def start(self, release: Release, n: int) -> list[Instance]:
        instances = await super().start(release, n)
        self.started += [(i.pid, i.pid_started) for i in instances if i.pid and i.pid_started]
        return instances


# -- helpers -------------------------------------------------------------------


def demo(version: str = "v1", *flags: str, shell_prefix: str = "") -> Release:
    command = DEMO + "".join(f" {flag}" for flag in flags)
    if shell_prefix:  # run it under sh, which starts other processes first
        command = f"sh -c {shlex.quote(shell_prefix + ' exec ' + command)}"
    return Release(service="web", version=version, command=command)


def python(code: str, *args: str, version: str = "v1", **fields: Any) -> Release:
    """A release running `python -c code args`; braces in code are kept literal."""
    literal = code.replace("{", "{{").replace("}", "}}")
    command = " ".join([PY, "-c", shlex.quote(literal), *args])
    return Release(service="web", version=version, command=command, **fields)


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(POLL)


async def get(instance: Instance, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET; (status, lower-cased headers, body)."""
    reader, writer = await asyncio.open_connection(instance.host, instance.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


async def listening(*instances: Instance) -> None:
    for instance in instances:
        await until(listens(instance), f"{instance.id} to listen")


def listens(instance: Instance) -> Callable[[], bool]:
    """Accepts a connection: a port that only cannot be bound may be an app
    between bind() and listen(), which refuses the request that follows."""

    def accepts() -> bool:
        try:
            socket.create_connection((instance.host, instance.port), timeout=1).close()
        except OSError:
            return False
        return True

    return accepts


async def logged(path: Path, text: str) -> None:
    await until(lambda: path.exists() and path.read_text() == text, f"{path.name} to say {text!r}")


def group(pgid: int | None) -> set[int]:
    """Live processes (zombies excluded) of process group `pgid`."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                members.add(int(stat.parent.name))
    return members


def with_environment(entry: str) -> set[int]:
    """Live processes that have `entry` ("NAME=value") in their environment."""
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.add(int(environ.parent.name))
    return {pid for pid in found if procfs.start_time(pid) is not None}


def log_of(state_dir: Path, instance: Instance) -> Path:
    return state_dir / "logs" / instance.service / instance.version / f"{instance.id}.log"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- starting ------------------------------------------------------------------


def test_two_instances_listen_on_their_own_ports_and_answer_with_their_version(
    run: Run, make: Make, state_dir: Path, window: tuple[int, int]
) -> None:
    async def body() -> None:
        runtime = make()
        instances = await runtime.start(demo("v7"), 2)
        await listening(*instances)
        ports = {i.port for i in instances}
        assert len(ports) == 2
        assert all(window[0] <= p <= window[1] for p in ports)
        assert runtime.instances("web") == instances
        assert runtime.instances("other") == []
        for instance in instances:
            assert instance.id.startswith("web-v7-")
            assert instance.state == "starting"
            assert instance.pid is not None
            assert instance.pid_started is not None
            assert procfs.is_running(instance.pid, instance.pid_started)
            status, headers, text = await get(instance)
            assert (status, headers["x-version"], text) == (200, "v7", b"v7\n")
            banner = f"demo v7 listening on 127.0.0.1:{instance.port}\n"
            await logged(log_of(state_dir, instance), banner)
        assert runtime.ports.held == ports
        await asyncio.gather(*(runtime.stop(instance, 5) for instance in instances))

    run(body())


def test_command_cwd_and_environment_are_filled_in(
    run: Run, make: Make, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERODOWN_TOKEN", "admin-secret")  # the daemon's, not the app's
    code = """if True:
        import os, sys
        env = os.environ
        print("PORT", env["PORT"], "VERSION", env["ZERODOWN_VERSION"], "APP", env["APP_ENV"])
        print("TOKEN", env.get("ZERODOWN_TOKEN"), "CWD", os.getcwd(), flush=True)
        print("ARGS", sys.argv[1:], file=sys.stderr, flush=True)
        sys.exit(3)
    """
    version = "v1 'two'"  # one argument however it is quoted, and a safe directory name
    (tmp_path / version).mkdir()
    release = python(
        code, "{port}", "--version={version}", version=version,
        cwd=str(tmp_path / "{version}"), env=(("APP_ENV", "prod"),),
    )  # fmt: skip

    async def body() -> None:
        runtime = make()
        exits: list[tuple[Instance, int | None]] = []
        runtime.on_exit(lambda instance, code: exits.append((instance, code)))
        [instance] = await runtime.start(release, 1)
        await until(lambda: len(exits) == 1, "the exit")
        assert exits == [(instance, 3)]
        assert instance.state == "crashed"
        safe_id = re.sub("[ ']", "_", instance.id)
        path = state_dir / "logs/web/v1__two_" / f"{safe_id}.log"
        await until(lambda: path.exists() and path.read_text().count("\n") == 3, "the log")
        assert path.read_text().splitlines() == [
            f"PORT {instance.port} VERSION {version} APP prod",
            f"TOKEN None CWD {tmp_path / version}",
            f"ARGS ['{instance.port}', \"--version={version}\"]",
        ]

    run(body())


def test_output_is_rotated_at_the_size_limit(run: Run, make: Make, state_dir: Path) -> None:
    lines = [f"line {i:03} {'x' * 40}\n" for i in range(100)]  # 50 bytes each
    release = python("import sys\nfor i in range(100): print('line %03d ' % i + 'x' * 40)")

    async def body() -> None:
        runtime = make(log_max_bytes=1000, log_backups=2)
        [instance] = await runtime.start(release, 1)
        log = log_of(state_dir, instance)
        await until(lambda: log.read_text().endswith(lines[-1]), "the last line")
        assert sorted(p.name for p in log.parent.iterdir()) == [
            log.name, f"{log.name}.1", f"{log.name}.2"
        ]  # fmt: skip
        kept = [log.with_name(f"{log.name}.{n}").read_text() for n in (2, 1)] + [log.read_text()]
        assert all(len(text) <= 1000 and text.endswith("\n") for text in kept)
        assert "".join(lines).endswith("".join(kept))
        assert len("".join(kept)) >= 2000

    run(body())


def test_a_command_that_cannot_start_names_what_is_wrong(
    run: Run, make: Make, tmp_path: Path
) -> None:
    cases = [
        (Release("web", "v1", "zd-no-such-program --port {port}"), "'zd-no-such-program'"),
        (Release("web", "v1", DEMO, cwd=str(tmp_path / "nope")), "working directory"),
        (Release("web", "v1", "echo {nope}"), "bad command 'echo {nope}'"),
        (Release("web", "v1", "echo 'unclosed"), "bad command"),
        (Release("web", "v1", " "), "empty command for web v1"),
    ]

    async def body() -> None:
        runtime = make()
        for release, message in cases:
            with pytest.raises(RuntimeStartError, match=message) as caught:
                await runtime.start(release, 1)
            assert isinstance(caught.value, DeployError)
        assert runtime.instances() == []
        assert runtime.ports.held == frozenset()

    run(body())


def test_when_one_instance_cannot_start_those_started_are_stopped(
    run: Run, make: Make, state_dir: Path, window: tuple[int, int]
) -> None:
    async def body() -> None:
        port = next(p for p in range(*window) if can_listen("127.0.0.1", p))
        runtime = make(port_range=(port, port))  # room for one instance
        marker = ("ZD_TEST_MARK", f"{random.getrandbits(64):x}")
        with pytest.raises(NoFreePort):
            await runtime.start(python(IDLE, env=(marker,)), 2)
        assert runtime.instances() == []
        assert runtime.ports.held == frozenset()
        assert len(list((state_dir / "logs/web/v1").iterdir())) == 1  # one did start
        assert not with_environment("=".join(marker))

    run(body())


# -- ports ---------------------------------------------------------------------


def test_ports_skip_what_is_busy_and_what_our_instances_hold(
    run: Run, make: Make, window: tuple[int, int]
) -> None:
    first = next(p for p in range(window[0], window[1] - 2) if _all_free(p, p + 1, p + 2))

    async def body() -> None:
        runtime = make(port_range=(first, first + 2))
        with socket.create_server(("127.0.0.1", first)):  # someone else's server
            [one] = await runtime.start(python(IDLE), 1)
            one.state = "draining"  # still ours while it drains: never handed out again
            [two] = await runtime.start(python(IDLE), 1)
            with pytest.raises(NoFreePort, match="2 held by instances, the other 1 busy"):
                await runtime.start(python(IDLE), 1)
        assert {one.port, two.port} == {first + 1, first + 2}  # the cursor starts anywhere
        for instance in (one, two):
            await runtime.stop(instance, 0)

    run(body())


def test_runtimes_of_one_process_share_their_ports(run: Run, make: Make) -> None:
    async def body() -> None:
        web, api = make(), make()  # the daemon runs one per service, over one range
        # Not listening yet (a slow start): only the shared claims keep them apart.
        [one] = await web.start(python(IDLE), 1)
        [two] = await api.start(python(IDLE), 1)
        assert one.port != two.port
        await asyncio.gather(web.stop(one, 0), api.stop(two, 0))

    run(body())


def _all_free(*ports: int) -> bool:
    return all(can_listen("127.0.0.1", port) for port in ports)


def test_probe_refuses_a_listener_and_accepts_a_port_in_time_wait() -> None:
    server = socket.create_server(("127.0.0.1", 0), reuse_port=False)
    host, port = server.getsockname()
    assert not can_listen(host, port)
    # The server closes first, so its side of the connection holds the port in
    # TIME_WAIT, as an instance's does after a stop; servers (SO_REUSEADDR)
    # may listen there again, and so the probe must say free.
    client = socket.create_connection((host, port))
    accepted, _ = server.accept()
    accepted.close()
    client.close()
    server.close()
    assert can_listen(host, port)
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):  # no SO_REUSEADDR
        plain.bind((host, port))


# -- stopping ------------------------------------------------------------------


def test_stop_ends_the_whole_group_frees_the_port_and_tells_nobody(run: Run, make: Make) -> None:
    async def body() -> None:
        runtime = make()
        exits: list[tuple[Instance, int | None]] = []
        runtime.on_exit(lambda instance, code: exits.append((instance, code)))
        [instance] = await runtime.start(demo(shell_prefix="sleep 100 &"), 1)
        await listening(instance)
        assert len(group(instance.pid)) == 2  # the app and the sleep it left running
        assert await runtime.terminate(instance, 5) == 0  # the demo's graceful exit
        assert can_listen(instance.host, instance.port)
        await until(lambda: not group(instance.pid), "the group to die")
        assert instance.state == "stopped"
        assert runtime.instances() == []
        assert runtime.ports.held == frozenset()
        assert exits == []

    run(body())


def test_an_app_that_ignores_sigterm_is_killed_after_the_grace(run: Run, make: Make) -> None:
    async def body() -> None:
        runtime = make()
        [instance] = await runtime.start(demo("v1", "--ignore-sigterm"), 1)
        await listening(instance)
        assert await runtime.terminate(instance, 0.3) == -signal.SIGKILL
        assert can_listen(instance.host, instance.port)
        assert not group(instance.pid)

    run(body())


def test_stopping_twice_at_once_or_after_exit_is_quiet(run: Run, make: Make) -> None:
    async def body() -> None:
        runtime = make()
        [instance] = await runtime.start(python(IDLE), 1)
        codes = await asyncio.gather(*(runtime.terminate(instance, 5) for _ in range(2)))
        assert codes == [-signal.SIGTERM] * 2
        assert await runtime.terminate(instance, 5) is None  # gone: nothing to stop
        await runtime.stop(instance, 5)

    run(body())


# -- crashes -------------------------------------------------------------------


def test_a_crash_is_reported_once_to_every_callback(run: Run, make: Make) -> None:
    async def body() -> None:
        runtime = make()
        first: list[tuple[Instance, int | None]] = []
        second: list[tuple[Instance, int | None]] = []
        runtime.on_exit(lambda instance, code: first.append((instance, code)))
        runtime.on_exit(_broken_callback)  # logged; the others still hear of it
        runtime.on_exit(lambda instance, code: second.append((instance, code)))
        crashing, staying = await runtime.start(python(IDLE), 2)
        assert crashing.pid is not None
        os.kill(crashing.pid, signal.SIGKILL)
        await until(lambda: len(second) == 1, "the exit callbacks")
        assert first == second == [(crashing, -signal.SIGKILL)]
        assert crashing.state == "crashed"
        assert runtime.instances() == [staying]
        assert runtime.ports.held == {staying.port}
        await runtime.stop(crashing, 5)  # already gone: fine, and no second report
        await runtime.stop(staying, 5)
        assert len(first) == len(second) == 1

    run(body())


def test_an_exit_is_reported_by_signal_with_the_end_of_its_log(
    run: Run, make: Make, state_dir: Path
) -> None:
    async def body() -> None:
        runtime = make()
        heard: list[ExitReport | None] = []
        # Read in the callback: the log is complete by the time anyone hears.
        runtime.on_exit(lambda instance, code: heard.append(runtime.exit_report(instance)))
        code = "import time\nfor n in range(12): print('line', n)\ntime.sleep(100)"
        [instance] = await runtime.start(python(code), 1)
        log = log_of(state_dir, instance)
        await until(lambda: log.exists() and "line 11" in log.read_text(), "its output")
        assert instance.pid is not None
        os.kill(instance.pid, signal.SIGSEGV)
        await until(lambda: len(heard) == 1, "the exit callback")
        assert heard == [runtime.exit_report(instance)]
        report = heard[0]
        assert report is not None, report
        assert report.code == -signal.SIGSEGV, report
        assert report.how == "killed by SIGSEGV"
        assert report.log == log
        assert report.tail == tuple(f"line {n}" for n in range(2, 12))
        assert report.output().startswith(f"last 10 lines of {log}:\n    line 2\n")

    run(body())


def test_an_exit_while_starting_shows_the_end_of_its_log(run: Run, make: Make) -> None:
    async def body() -> None:
        runtime = make()
        release = Release("web", "v1", "sh -c 'echo cannot open config.yml; exit 3'")
        with pytest.raises(InstanceExited) as stopped:
            await runtime.start(release, 400)  # stops at the first exit it sees
        assert stopped.value.code == 3
        assert stopped.value.report is not None
        assert stopped.value.report.tail == ("cannot open config.yml",)
        assert str(stopped.value).endswith(":\n    cannot open config.yml"), stopped.value

    run(body())


def test_exits_are_noticed_without_a_pidfd_too(
    run: Run, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open")  # as on a kernel before 5.3: polling instead

    async def body() -> None:
        runtime = make()
        exits: list[tuple[Instance, int | None]] = []
        runtime.on_exit(lambda instance, code: exits.append((instance, code)))
        crashing, stopping = await runtime.start(python(IDLE), 2)
        assert crashing.pid is not None
        os.kill(crashing.pid, signal.SIGKILL)
        await until(lambda: len(exits) == 1, "the exit callback")
        assert exits == [(crashing, -signal.SIGKILL)]
        assert await runtime.terminate(stopping, 5) == -signal.SIGTERM
        assert len(exits) == 1

    run(body())


def _broken_callback(instance: Instance, code: int | None) -> None:
    raise RuntimeError("a listener with a bug")


# -- adoption after a daemon restart ---------------------------------------------


def test_a_new_runtime_adopts_what_the_old_one_left_running(run: Run, make: Make) -> None:
    async def body() -> None:
        old = make()
        instances = await old.start(demo(), 2)
        await listening(*instances)
        await old.close()
        assert all([(await get(i))[0] == 200 for i in instances])  # close killed nothing

        new = make()
        exits: list[tuple[Instance, int | None]] = []
        new.on_exit(lambda instance, code: exits.append((instance, code)))
        records = [dataclasses.replace(i) for i in instances]  # as read back from a store
        reused = dataclasses.replace(records[0], id="web-v1-reused")
        reused.pid_started = (records[0].pid_started or 0) + 1  # same pid, another process
        dead = dataclasses.replace(records[1], id="web-v1-dead", pid=dead_pid())
        assert await new.adopt([*records, reused, dead]) == records
        assert new.instances() == records
        assert new.ports.held == {i.port for i in records}

        [fresh] = await new.start(python(IDLE), 1)
        assert fresh.port not in {i.port for i in records}
        crashing, stopping = records
        assert crashing.pid is not None
        os.kill(crashing.pid, signal.SIGKILL)
        await until(lambda: len(exits) == 1, "the adopted instance's exit")
        assert exits == [(crashing, None)]
        assert crashing.state == "crashed"
        assert await new.terminate(stopping, 5) is None  # not our child: code unknown
        assert can_listen(stopping.host, stopping.port)
        assert not group(stopping.pid)
        assert stopping.state == "stopped"
        assert len(exits) == 1
        await new.stop(fresh, 0)

    run(body())


def test_kill_stale_stops_live_records_and_skips_the_rest(run: Run, make: Make) -> None:
    async def body() -> None:
        old = make()
        [instance] = await old.start(demo(shell_prefix="sleep 100 &"), 1)
        await listening(instance)
        await old.close()
        dead = dataclasses.replace(instance, id="web-v1-dead", pid=dead_pid())

        new = make()
        assert await new.kill_stale([instance, dead], grace=5) == [instance]
        assert new.instances() == []
        assert new.ports.held == frozenset()
        assert can_listen(instance.host, instance.port)
        await until(lambda: not group(instance.pid), "the group to die")

    run(body())


def test_a_closed_runtime_starts_nothing(run: Run, make: Make) -> None:
    async def body() -> None:
        runtime = make()
        await runtime.close()
        with pytest.raises(RuntimeStartError, match="closed"):
            await runtime.start(python(IDLE), 1)

    run(body())


# -- the log writer alone --------------------------------------------------------


def test_rotation_keeps_lines_whole_and_splits_only_an_overlong_one(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "a.log", max_bytes=10, backups=5)
    for chunk in (b"12345\n", b"678\nabcdef\n", b"0123456789ABCDE"):
        log.write(chunk)
    log.close()
    texts = [(tmp_path / name).read_bytes() for name in ("a.log.3", "a.log.2", "a.log.1")]
    assert [*texts, (tmp_path / "a.log").read_bytes()] == [
        b"12345\n678\n", b"abcdef\n", b"0123456789", b"ABCDE"
    ]  # fmt: skip


def test_no_backups_means_truncate_and_a_reopened_log_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"before\n")
    log = RotatingLog(path, max_bytes=10, backups=0)
    log.write(b"ab\n")  # still fits after what was there
    log.write(b"cd\n")
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log"]
    assert path.read_bytes() == b"cd\n"
