"""The load generator against real sockets: demo apps behind the proxy, and
harness backends that misbehave on purpose, so every kind of failure (and
the one thing that is not a failure, a keep-alive connection closed between
requests) is seen being counted. Assertions are on counts, not timings.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import (
    DEADLINE,
    Action,
    Request,
    backends,
    ok,
    port_of,
    proxy,
    reserved_port,
    run,
    service,
)
from zerodown.cli.client import AdminClient, AdminError
from zerodown.demo.process import AppProcess, spawn_app
from zerodown.routing import RoutingTable
from zerodown.verify import LoadResult, LoadSpec, Report, run_command, run_load, verify
from zerodown.verify.load import clock


@pytest.fixture(scope="module")
def apps() -> Iterator[tuple[AppProcess, AppProcess]]:
    v1, v2 = spawn_app("v1"), spawn_app("v2")
    try:
        yield v1, v2
    finally:
        v1.stop()
        v2.stop()


def url(port: int, path: str = "/") -> str:
    return f"http://127.0.0.1:{port}{path}"


def failures(result: LoadResult) -> Counter[str]:
    return Counter(s.failure for s in result.samples if s.failure is not None)


async def through_proxy(addresses: tuple[str, ...], **spec: Any) -> LoadResult:
    async with proxy(service(*addresses)) as server:
        return await run_load(LoadSpec(url(port_of(server)), **spec))


# -- through the proxy, nothing fails ------------------------------------------------


def test_two_versions_behind_the_proxy_drop_nothing(apps: tuple[AppProcess, AppProcess]) -> None:
    addresses = (apps[0].address, apps[1].address)
    result = run(through_proxy(addresses, concurrency=8, duration=1.0))
    report = Report.from_result(result)
    assert report.failed == 0, report.summary()
    assert report.total > 100
    assert set(report.versions) == {"v1", "v2"}
    assert report.statuses == {200: report.total}


def test_rate_is_held_over_all_connections(apps: tuple[AppProcess, AppProcess]) -> None:
    result = run(through_proxy((apps[0].address,), rate=200, concurrency=8, duration=1.0))
    assert 150 <= len(result.samples) <= 250
    assert not failures(result)


def test_long_requests_and_posts_complete(apps: tuple[AppProcess, AppProcess]) -> None:
    addresses = (apps[0].address, apps[1].address)
    spec = {"long_ratio": 0.25, "long_path": "/slow?ms=300", "post_ratio": 0.25}
    result = run(through_proxy(addresses, concurrency=8, duration=1.0, **spec))
    kinds = Counter(s.kind for s in result.samples)
    assert kinds["long"] > 0
    assert kinds["post"] > 0
    assert all(s.status == 200 for s in result.samples), failures(result)
    # The app held them (its 300 ms sleep runs on millisecond timers that may
    # fire a hair early): well above a plain request, not an exact duration.
    assert all(s.latency >= 0.2 for s in result.samples if s.kind == "long")


# -- a dying backend: every request after the kill is a counted failure ---------------


async def load_and_kill(app: AppProcess, target: str) -> tuple[LoadResult, float]:
    """Load `target` for 0.4 s, SIGKILL `app`, load 0.4 s more; return the kill's offset."""
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(LoadSpec(target, concurrency=4, timeout=2.0), stop))
    await asyncio.sleep(0.4)
    killed = clock()
    app.proc.kill()
    await asyncio.sleep(0.4)
    stop.set()
    result = await load
    return result, killed - result.origin


def assert_nothing_after(result: LoadResult, killed: float) -> None:
    before = [s for s in result.samples if s.start + s.latency < killed]
    after = [s for s in result.samples if s.start > killed + 0.05]  # the kernel has closed all
    assert before
    assert all(s.failure is None for s in before)
    assert after
    assert all(s.failure is not None for s in after)


def test_killed_backend_direct_is_connect_and_reset_failures() -> None:
    app = spawn_app("v3")
    try:
        result, killed = run(load_and_kill(app, url(app.port)))
    finally:
        app.stop()
    assert_nothing_after(result, killed)
    assert set(failures(result)) <= {"connect", "reset"}
    assert failures(result)["connect"] > 0


def test_killed_backend_behind_the_proxy_is_5xx() -> None:
    app = spawn_app("v3")

    async def scenario() -> tuple[LoadResult, float]:
        async with proxy(service(app.address)) as server:
            return await load_and_kill(app, url(port_of(server)))

    try:
        result, killed = run(scenario())
    finally:
        app.stop()
    assert_nothing_after(result, killed)
    # Requests after the kill get the proxy's 5xx. One whose response head was
    # already on its way when the app died can only be cut: a reset, never a 200.
    assert "5xx" in failures(result)
    assert set(failures(result)) <= {"5xx", "reset"}
    assert {s.status for s in result.samples if s.failure == "5xx"} <= {502, 503, 504}


# -- each kind of failure, from a backend that misbehaves on purpose -------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (ok(b"oops", status=503), "5xx"),
        (Action(hang=True), "timeout"),
        (Action(close=True), "reset"),  # on a fresh connection: the server's fault
        (Action(partial=b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhal"), "reset"),
        (b"SMTP ready\r\n\r\n", "protocol"),
    ],
)
def test_failure_kinds(answer: bytes | Action, kind: str) -> None:
    async def handler(request: Request) -> bytes | Action:
        return answer

    async def scenario() -> LoadResult:
        async with backends("b", handler=handler) as (backend,):
            # A short timeout only where a timeout is the kind under test: on a
            # loaded machine one instant 503 once took over 0.2 s.
            timeout = 0.2 if kind == "timeout" else 5.0
            spec = LoadSpec(url(backend.port), concurrency=2, duration=0.3, timeout=timeout)
            return await run_load(spec)

    result = run(scenario())
    assert result.samples
    assert failures(result) == {kind: len(result.samples)}
    assert result.reconnects == 0


def test_refused_connections_back_off() -> None:
    # Bound but not listening: the port refuses, and no other test can take it meanwhile.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        spec = LoadSpec(url(closed.getsockname()[1]), concurrency=4, duration=0.3)
        result = run(run_load(spec))
    assert failures(result) == {"connect": len(result.samples)}
    assert len(result.samples) < 100  # a few per connection, not a busy loop


# -- keep-alive closed between requests: reconnects, not failures ----------------------


@pytest.mark.parametrize("rate", [None, 100.0], ids=["back-to-back", "idle-gaps"])
def test_server_closing_kept_alive_connections_is_no_failure(rate: float | None) -> None:
    async def handler(request: Request) -> bytes:
        return ok(b"v1\n", headers={"X-Version": "v1"})

    async def scenario() -> LoadResult:
        async with backends("b", handler=handler, close_after=1) as (backend,):
            spec = LoadSpec(url(backend.port), concurrency=4, duration=0.5, rate=rate)
            return await run_load(spec)

    result = run(scenario())
    assert len(result.samples) > 20
    assert not failures(result)
    # Every request after each connection's first needed a new connection.
    assert result.reconnects >= len(result.samples) - 4
    assert {s.version for s in result.samples} == {"v1"}


# -- verify(): load around an operation -------------------------------------------------


def test_verify_around_a_switch(apps: tuple[AppProcess, AppProcess], tmp_path: Path) -> None:
    v1, v2 = apps

    async def scenario() -> tuple[Report, str | None]:
        async with proxy(service(v1.address)) as server:

            async def switch() -> str:
                await asyncio.sleep(0.2)
                await server.apply(RoutingTable(services=(service(v2.address),)))
                return "switched"

            spec = LoadSpec(url(port_of(server)), concurrency=4)
            return await verify(spec, switch, warmup=0.3, cooldown=0.3, bucket=0.1)

    report, outcome = run(scenario())
    assert outcome == "switched"
    assert report.failed == 0, report.summary()
    assert list(report.versions) == ["v1", "v2"]
    start, done = report.marks
    assert (start.label, done.label) == ("deploy", "deploy done")
    assert 0.25 < start.at < done.at < report.duration
    # Nothing reached v2 before the switch began, nothing reached v1 after it was done.
    assert report.versions["v1"].last <= done.at
    assert report.versions["v2"].first >= start.at
    json_path, svg_path = report.write(tmp_path / "switch")
    assert json.loads(json_path.read_text())["failed"] == 0
    assert ET.parse(svg_path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_verify_without_during_just_loads(apps: tuple[AppProcess, AppProcess]) -> None:
    async def scenario() -> tuple[Report, None]:
        async with proxy(service(apps[0].address)) as server:
            spec = LoadSpec(url(port_of(server)), concurrency=2)
            return await verify(spec, warmup=0.1, cooldown=0.1)

    report, outcome = run(scenario())
    assert outcome is None
    assert report.marks == ()
    assert report.total > 0
    assert report.failed == 0


def test_verify_load_only_runs_for_its_duration(apps: tuple[AppProcess, AppProcess]) -> None:
    async def scenario() -> tuple[Report, None]:
        async with proxy(service(apps[0].address)) as server:
            spec = LoadSpec(url(port_of(server)), concurrency=2, duration=1.5)
            return await verify(spec, warmup=0.1, cooldown=0.1)

    report, _ = run(scenario())
    assert report.end >= 1.4  # not cut at warmup + cooldown (0.2 s); a duration of 1.5 s
    assert report.bucket == 0.1  # chosen from the run's length
    assert report.total > 0
    assert report.failed == 0


def test_verify_stops_the_load_when_during_fails(apps: tuple[AppProcess, AppProcess]) -> None:
    async def broken() -> None:
        raise RuntimeError("deploy crashed")

    async def scenario() -> None:
        async with proxy(service(apps[0].address)) as server:
            spec = LoadSpec(url(port_of(server)), concurrency=2)
            with pytest.raises(RuntimeError, match="deploy crashed"):
                await verify(spec, broken, warmup=0.1)
            others = asyncio.all_tasks() - {asyncio.current_task()}
            assert not [t for t in others if "run_load" in repr(t.get_coro())]

    run(scenario())


def test_run_command_returns_the_exit_code() -> None:
    code = run(run_command([sys.executable, "-c", "raise SystemExit(3)"]))
    assert code == 3


# -- `zerodown verify --deploy` against a real `zerodown serve` --------------------


@pytest.fixture
def routed_serve(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A serve whose one service is routed at host api.test, path /api, with v1 deployed.

    Version "never" never listens: its deploy times out in the gate and rolls back.
    """
    listen, admin = reserved_port(), reserved_port()
    app = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    config = tmp_path / "zerodown.toml"
    config.write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{listen}"]\nadmin = "127.0.0.1:{admin}"\n'
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n\n"
        '[services.web]\nroute = { host = "api.test", path = "/api" }\n'
        f"command = \"sh -c '[ {{version}} = never ] && exec sleep 60; exec {app}'\"\n"
        'instances = 1\ndeploy_timeout = "2s"\n'
        'health = { path = "/health", interval = "100ms", rise = 1 }\n'
    )
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = AdminClient(f"http://127.0.0.1:{admin}", None, DEADLINE)
        wait_until(lambda: _answers(client), serve, tmp_path / "serve.log")
        assert client.wait(client.deploy("web", "v1"), DEADLINE)["outcome"] == "succeeded"
        yield config, f"http://127.0.0.1:{listen}/api"
    finally:
        serve.terminate()
        serve.wait(DEADLINE)
        log.close()


def _answers(client: AdminClient) -> bool:
    try:
        return bool(client.status())
    except AdminError:
        return False


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_verify_deploy_says_it_rolled_back_and_loads_the_service_route(
    routed_serve: tuple[Path, str], tmp_path: Path
) -> None:
    config, where = routed_serve
    out = tmp_path / "verify"
    args = ["--deploy", "web", "never", "--concurrency", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "zerodown", "verify", "-c", str(config), *args],
        capture_output=True,
        timeout=DEADLINE * 2,
    )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 1, stderr
    first = stdout.splitlines()[0]
    assert first.startswith("deploy web v1 → never, rolling: rolled back: "), stdout
    assert "health" in first  # the reason: the gate that timed out
    assert stderr.splitlines()[-1].startswith("zerodown: verify: the deploy ended rolled back ("), (
        stderr
    )
    # The load went where the service is routed (Host api.test, /api), so v1
    # answered all of it; at `/` every request would have failed (no route).
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["url"] == where
    assert report["failed"] == 0
    assert report["total"] > 0
    assert set(report["versions"]) == {"v1"}
    assert report["during"]["outcome"] == "rolled back"
