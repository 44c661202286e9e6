"""The deploy-under-load extra: zerodown deploying under the highest load it sustains.

`zerodown serve` (2 proxy workers) runs one service from zerodown's demo app,
2 instances; the CLI deploys v1. Then wrk (2 threads, closed loop: every
connection sends its next request as soon as it has the last answer, so the
load is as high as this machine sustains; the Python app bounds it) runs
once with no deploy, as the reference, and once around each deploy: from
`settle` seconds before `zerodown deploy web v2 --strategy rolling` to
`settle` seconds after it returned, stopped with SIGINT (wrk then prints its
summary as at the end of its -d), then the same for v3 with blue_green. A
Lua script counts the answers by X-Version and by status. The target: every
deploy succeeds, and not one request fails.

The app instances run in sessions of their own, out of reach of a signal to
the daemon's process group: SIGTERM to `zerodown serve` stops them, and a
scan of /proc for the mark in their environment kills any it left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from zdbench import procfs
from zdbench.model import DeployLoad, LoadedDeploy
from zdbench.procs import RUN_SLACK, StartError, Supervisor
from zdbench.servers import TEMPLATES, Ports, render, wait_listening, wait_ready
from zdbench.wrk import WrkOutputError, WrkResult, parse_counts, parse_wrk, wrk_command

WORKERS = 2  # [proxy] workers
INSTANCES = 2  # of each release
FIRST = "v1"
STEPS = (("rolling", "v2"), ("blue_green", "v3"))  # one after the other, each under load
SERVICE = "web"
MARK_ENV = "ZDBENCH_MARK"
VERSION_ENV = "ZERODOWN_VERSION"  # the runtime sets it in every instance's environment
CLI_WAIT = 120.0  # the deploy CLI's --timeout; the app's deploy_timeout is 60 s
WRK_STOP_TIMEOUT = 10.0  # SIGINT to wrk's summary
DAEMON_STOP_TIMEOUT = 40.0  # SIGTERM to exit: shutdown_timeout, then the instances' stop_grace
LEFTOVER_GRACE = 5.0  # for stopped instances to vanish from /proc
POLL = 0.1
BUSY_SHARE = 0.1  # a proxy process that took less of the proxy's CPU is not serving
# Instance ports: a random window in the upper half of zerodown's default range
# (another zerodown on this machine starts from its bottom), below the kernel's
# ephemeral ports, where wrk's and the proxy's own connections take theirs.
PORTS_LOW, PORTS_HIGH, PORT_WINDOW = 25000, 30000, 200
COUNT_SCRIPT = TEMPLATES / "wrk-count.lua"


def zerodown_bin() -> str:
    return str(Path(sys.executable).parent / "zerodown")


def under_load(
    sup: Supervisor,
    work: Path,
    ports: Ports,
    *,
    conns: int,
    threads: int,
    settle_s: float,
    dataplane: str = "embedded",
) -> DeployLoad:
    """The whole extra through one data plane; StartError when `zerodown serve` does not start."""
    work.mkdir(parents=True, exist_ok=True)
    mark = uuid.uuid4().hex
    config = write_config(work, ports, mark, dataplane)
    log = work / "serve.log"
    daemon = sup.start([zerodown_bin(), "serve", "-c", str(config)], log=log)
    base = DeployLoad(dataplane, conns, threads, WORKERS, INSTANCES, settle_s)
    try:
        wait_listening(daemon, ports.admin, log)
        wait_listening(daemon, ports.front, log)
        result = _deploys(sup, daemon, config, ports, base, mark)
    finally:
        code, left = stop_daemon(sup, daemon, mark)
    return dataclasses.replace(result, daemon_exit=code, leftovers=left)


def write_config(work: Path, ports: Ports, mark: str, dataplane: str = "embedded") -> Path:
    low = random.randrange(PORTS_LOW, PORTS_HIGH - PORT_WINDOW)
    command = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    config = work / "zerodown.toml"
    config.write_text(
        render(
            "zerodown-deploy.toml",
            dir=work,
            port=ports.front,
            admin=ports.admin,
            workers=WORKERS,
            dataplane=dataplane.removesuffix("-reload"),
            # nginx-reload: each step a new configuration and a reload.
            extra='nginx = { upstreams = "reload" }' if dataplane == "nginx-reload" else "",
            instances=INSTANCES,
            command=json.dumps(command),  # a JSON string is a TOML basic string
            mark_env=MARK_ENV,
            mark=mark,
            ports=f"{low}-{low + PORT_WINDOW - 1}",
        )
    )
    return config


def _deploys(
    sup: Supervisor,
    daemon: subprocess.Popen[bytes],
    config: Path,
    ports: Ports,
    base: DeployLoad,
    mark: str,
) -> DeployLoad:
    code, view = cli_deploy(sup, config, FIRST, None)
    if code != 0 or view.get("outcome") != "succeeded":
        return dataclasses.replace(base, error=f"first deploy {FIRST}: {_why(code, view)}")
    try:
        wait_ready(daemon, ports.front, config.parent / "serve.log")
    except StartError as exc:
        return dataclasses.replace(base, error=f"{FIRST} deployed, but: {exc}")
    url = f"http://127.0.0.1:{ports.front}/"
    before = proxy_ticks(daemon, mark)
    steady = steady_load(sup, url, base.conns, base.threads, 2 * base.settle_s)
    serving: int | None = len(procfs.busy_processes(before, proxy_ticks(daemon, mark), BUSY_SHARE))
    if base.dataplane != "embedded":
        serving = None  # HAProxy's workers are threads; nginx's its own: no worker count to check
    deploys: list[LoadedDeploy] = []
    current = FIRST
    for strategy, version in STEPS:
        one = deploy_under_load(sup, config, url, base, strategy, version, current)
        one = dataclasses.replace(one, running_after=running(mark))
        deploys.append(one)
        print(f"  {deploy_progress(one)}", flush=True)
        if one.succeeded:
            current = version
    return dataclasses.replace(
        base, steady=steady, serving_processes=serving, deploys=tuple(deploys)
    )


def steady_load(
    sup: Supervisor, url: str, conns: int, threads: int, duration: float
) -> WrkResult | None:
    argv = wrk_command(
        url, connections=conns, threads=threads, duration_s=duration, script=COUNT_SCRIPT
    )
    try:
        result = parse_wrk(sup.run(argv, timeout=duration + RUN_SLACK))
    except (subprocess.TimeoutExpired, WrkOutputError):
        return None
    print(f"  steady load, no deploy: {_load_line(result)}", flush=True)
    return result


def deploy_under_load(
    sup: Supervisor,
    config: Path,
    url: str,
    base: DeployLoad,
    strategy: str,
    version: str,
    previous: str,
) -> LoadedDeploy:
    """wrk from `settle` before the deploy to `settle` after it returned."""
    log = config.parent / f"wrk-{strategy}-{version}.log"
    longest = 2 * base.settle_s + CLI_WAIT + RUN_SLACK  # stopped with SIGINT long before
    argv = wrk_command(
        url, connections=base.conns, threads=base.threads, duration_s=longest, script=COUNT_SCRIPT
    )
    wrk = sup.start(argv, log=log)
    began = time.monotonic()
    try:
        time.sleep(base.settle_s)
        started = time.monotonic() - began
        code, view = cli_deploy(sup, config, version, strategy)
        returned = time.monotonic() - began
        time.sleep(base.settle_s)
    finally:
        text = stop_wrk(sup, wrk, log)
    try:
        result: WrkResult | None = parse_wrk(text)
    except WrkOutputError:
        result = None
    versions, statuses = parse_counts(text)
    return LoadedDeploy(
        strategy=strategy,
        version=version,
        previous=previous,
        exit_code=code,
        outcome=view.get("outcome"),
        reason=view.get("reason") or (_why(code, view) if code != 0 else None),
        deploy_s=_deploy_seconds(view),
        started_s=started,
        returned_s=returned,
        wrk=result,
        versions=versions,
        statuses=statuses,
        running_after={},
    )


def cli_deploy(
    sup: Supervisor, config: Path, version: str, strategy: str | None
) -> tuple[int | None, dict[str, Any]]:
    """`zerodown deploy web VERSION --json`, followed to its end: exit code and DeployView."""
    argv = [zerodown_bin(), "deploy", SERVICE, version, "-c", str(config), "--json"]
    argv += ["--timeout", f"{CLI_WAIT:g}"]
    if strategy is not None:
        argv += ["--strategy", strategy]
    try:
        code, out = sup.call(argv, timeout=CLI_WAIT + RUN_SLACK)
    except subprocess.TimeoutExpired:
        return None, {}
    return code, _view(out)


def stop_wrk(sup: Supervisor, proc: subprocess.Popen[bytes], log: Path) -> str:
    """SIGINT: wrk stops and prints its summary; its output."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(WRK_STOP_TIMEOUT)
    sup.stop(proc)
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def stop_daemon(
    sup: Supervisor, daemon: subprocess.Popen[bytes], mark: str
) -> tuple[int | None, int]:
    """SIGTERM to `zerodown serve` alone (it stops its workers and instances), then its
    group; then any instance left is killed. Its exit code (None: killed) and the
    instances that were left."""
    code: int | None = daemon.poll()
    if code is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
    sup.stop(daemon)
    deadline = time.monotonic() + LEFTOVER_GRACE
    while (left := instances(mark)) and time.monotonic() < deadline:
        time.sleep(POLL)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return code, len(left)


def proxy_ticks(daemon: subprocess.Popen[bytes], mark: str) -> dict[int, int]:
    """CPU ticks of `zerodown serve` and its workers, the app instances left out."""
    apps = instances(mark)
    return {pid: t for pid, t in procfs.tree(daemon.pid).items() if pid not in apps}


def instances(mark: str) -> dict[int, str]:
    """pid -> version of every live app instance of this run."""
    found = procfs.with_environ(f"{MARK_ENV}={mark}")
    return {pid: env.get(VERSION_ENV, "?") for pid, env in found.items()}


def deploy_progress(d: LoadedDeploy) -> str:
    outcome = d.outcome or "no outcome"
    took = f" in {d.deploy_s:.1f} s" if d.deploy_s is not None else ""
    load = _load_line(d.wrk) if d.wrk is not None else "wrk did not finish"
    answered = " · ".join(f"{v} {n:,}" for v, n in d.versions.items()) or "—"
    return (
        f"{d.strategy} {d.previous} → {d.version}: {outcome}{took} (exit {d.exit_code});"
        f" {load}; answered by {answered}"
    )


# -- helpers -----------------------------------------------------------------------------


def running(mark: str) -> dict[str, int]:
    """App instances of this run per version, now."""
    counts: dict[str, int] = {}
    for version in instances(mark).values():
        counts[version] = counts.get(version, 0) + 1
    return dict(sorted(counts.items()))


def _load_line(r: WrkResult) -> str:
    p99 = f"{r.p99_us / 1000:.1f} ms" if r.p99_us is not None else "—"
    s = r.socket
    return (
        f"{r.requests:,} requests, {r.rps:,.0f} req/s, p99 {p99},"
        f" socket errors {s.connect}/{s.read}/{s.write}/{s.timeout}, non-2xx {r.non_2xx}"
    )


def _view(out: str) -> dict[str, Any]:
    """The DeployView the CLI printed (JSON), {} when there is none."""
    start = out.find("{")
    if start < 0:
        return {}
    try:
        view, _ = json.JSONDecoder().raw_decode(out[start:])
    except ValueError:
        return {}
    return view if isinstance(view, dict) else {}


def _why(code: int | None, view: dict[str, Any]) -> str:
    if code is None:
        return f"the CLI did not return within {CLI_WAIT + RUN_SLACK:g} s"
    outcome = view.get("outcome") or "no outcome"
    reason = view.get("reason")
    return f"exit {code}, {outcome}" + (f": {reason}" if reason else "")


def _deploy_seconds(view: dict[str, Any]) -> float | None:
    started, finished = view.get("started_at"), view.get("finished_at")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        return float(finished - started)
    return None
