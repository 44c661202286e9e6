"""The TCP row: an echo service through zerodown (a `mode = "tcp"` service, on
its embedded data plane and driving HAProxy and nginx), plain HAProxy
(`mode tcp`) and plain nginx (`stream {}`), 1 worker (or thread) each,
shared mode, one repetition.

The upstreams are two echo processes (`zdbench.tcpload serve`, uvloop, no
framing); the load is `zdbench.tcpload` in two processes at once (wrk's two
threads): 64-byte round trips over persistent connections at each of the
plan's concurrencies, new connections (connect, one echo, close) with the
first of them in flight, and bulk echo over a few connections. The same
loads straight to the echo processes, no proxy between, come first: the
ceiling the client and the echoes allow on this machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from zdbench import procfs
from zdbench.model import DRIVEN, PROXY_ORDER, SAME_AS, Variant
from zdbench.procs import RUN_SLACK, StartError, Supervisor, tail
from zdbench.servers import (
    HAPROXY,
    NGINX,
    READY_TIMEOUT,
    Ports,
    free_port,
    nginx_user_line,
    proxy_tree,
    render,
    start_proxy,
    wait_listening,
    wait_port_free,
)
from zdbench.tcpload import MESSAGE
from zdbench.tcpstats import (
    BULK,
    CONNECTIONS,
    ROUND_TRIPS,
    TcpLoad,
    TcpLoadError,
    TcpRun,
    combine,
    parse_line,
    split,
)

VARIANTS = tuple(Variant(proxy, 1) for proxy in PROXY_ORDER if proxy not in SAME_AS)
CLIENTS = 2  # load processes at once, as wrk's two threads
BULK_CONNS = 4
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
BENCH = Path(__file__).resolve().parent.parent


def loads(conns: Sequence[int]) -> list[tuple[str, int]]:
    """(kind, connections) of each load run against one proxy."""
    return [(ROUND_TRIPS, c) for c in conns] + [(CONNECTIONS, conns[0]), (BULK, BULK_CONNS)]


def measure(
    sup: Supervisor,
    work: Path,
    ports: Ports,
    conns: Sequence[int],
    duration_s: float,
    variants: Sequence[Variant] = VARIANTS,
) -> tuple[list[TcpRun], list[str]]:
    """Every variant through every load: the runs, and what failed."""
    runs: list[TcpRun] = []
    failures: list[str] = []
    echoes = (free_port(), free_port())
    servers = [start_echo(sup, port, work / f"echo{i + 1}") for i, port in enumerate(echoes)]
    try:
        for kind, count in loads(conns):
            try:
                load = run_clients(sup, echoes, kind, count, duration_s, work / "direct")
            except TcpLoadError as exc:
                failures.append(f"tcp no proxy {kind} c={count}: {exc}")
                continue
            runs.append(TcpRun(None, load, None))
            print(f"  tcp no proxy {kind} c={count}: {runs[-1].summary}", flush=True)
        for variant in variants:
            tcp_port = free_port()
            try:
                proc = start(sup, variant, ports, work / f"tcp-{variant.key}", tcp_port, echoes)
            except StartError as exc:
                failures.append(f"tcp {variant.label} did not start: {exc}")
                print(f"  tcp {variant.label}: did not start: {exc}", flush=True)
                continue
            try:
                for kind, count in loads(conns):
                    run = _one(sup, proc, variant, tcp_port, kind, count, duration_s, work)
                    if isinstance(run, str):
                        failures.append(run)
                    else:
                        runs.append(run)
            finally:
                sup.stop(proc)
                wait_port_free(tcp_port)
                wait_port_free(ports.front)
    finally:
        for server in servers:
            sup.stop(server)
    return runs, failures


def _one(
    sup: Supervisor,
    proc: subprocess.Popen[bytes],
    variant: Variant,
    port: int,
    kind: str,
    conns: int,
    duration_s: float,
    work: Path,
) -> TcpRun | str:
    before = proxy_tree(proc.pid, work / f"tcp-{variant.key}")
    try:
        load = run_clients(sup, (port,), kind, conns, duration_s, work / "load")
    except TcpLoadError as exc:
        return f"tcp {variant.label} {kind} c={conns}: {exc}"
    ticks = procfs.ticks_delta(before, proxy_tree(proc.pid, work / f"tcp-{variant.key}"))
    # per operation; bulk per MB echoed back
    ops = load.bytes // 1_000_000 if kind == BULK else load.count
    run = TcpRun(variant, load, procfs.cpu_us_per_request(ticks, ops))
    print(f"  tcp {variant.label} {kind} c={conns}: {run.summary}", flush=True)
    return run


def run_clients(
    sup: Supervisor, ports: Sequence[int], kind: str, conns: int, duration_s: float, work: Path
) -> TcpLoad:
    """CLIENTS load processes at once, their results as one."""
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH")) if p)
    procs = []
    for i, share in enumerate(split(conns, CLIENTS)):
        log = work / f"{kind}-{conns}-{i}.log"
        log.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "zdbench.tcpload", kind, "--port", ",".join(map(str, ports))]
        argv += ["--conns", str(share), "--seconds", f"{duration_s:g}"]
        procs.append((sup.start(argv, log=log, env=env), log))
    results = []
    deadline = time.monotonic() + duration_s + RUN_SLACK
    for proc, log in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        sup.stop(proc)
        results.append(parse_line(log.read_text(errors="replace")))
    return combine(results)


def start_echo(sup: Supervisor, port: int, work: Path) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "zdbench.tcpload", "serve", "--port", str(port)]
    proc = sup.start(argv, log=work / "echo.log", env=env)
    wait_listening(proc, port, work / "echo.log")
    return proc


def start(
    sup: Supervisor,
    variant: Variant,
    ports: Ports,
    work: Path,
    tcp_port: int,
    echoes: tuple[int, int],
) -> subprocess.Popen[bytes]:
    """One proxy with the echo service on `tcp_port`, once an echo goes through it."""
    work.mkdir(parents=True, exist_ok=True)
    e1, e2 = echoes
    log = work / "stdout.log"
    if variant.proxy == "zerodown" or variant.proxy in DRIVEN:
        extra = (
            f'\n[services.echo]\nmode = "tcp"\nlisten = "127.0.0.1:{tcp_port}"\n'
            f'upstreams = ["127.0.0.1:{e1}", "127.0.0.1:{e2}"]\n'
        )
        proc = start_proxy(sup, variant, ports, work, cpus=None, zerodown_extra=extra)
    else:
        values = {"dir": work, "tcp_port": tcp_port, "workers": variant.workers}
        if variant.proxy == "haproxy":
            conf = work / "haproxy.cfg"
            conf.write_text(render("haproxy-tcp.cfg", **values, echo1=e1, echo2=e2))
            argv = [HAPROXY, "-db", "-f", str(conf)]
        else:
            conf = work / "nginx.conf"
            text = render(
                "nginx-stream.conf", **values, echo1=e1, echo2=e2,
                stream_module=STREAM_MODULE, user=nginx_user_line(),
            )  # fmt: skip
            conf.write_text(text)
            argv = [NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
        proc = sup.start(argv, log=log)
    wait_echo(proc, tcp_port, log, work / "error.log")
    return proc


def wait_echo(proc: subprocess.Popen[bytes], port: int, *logs: Path) -> None:
    """Until one 64-byte message comes back through the port; StartError otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with {proc.returncode}: {_tails(logs)}")
        if echo_once(port):
            return
        time.sleep(0.05)
    raise StartError(f"no echo through port {port} within {READY_TIMEOUT:g}s: {_tails(logs)}")


def echo_once(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(MESSAGE)
            got = b""
            while len(got) < len(MESSAGE):
                chunk = sock.recv(len(MESSAGE) - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == MESSAGE
    except OSError:
        return False


def _tails(logs: Sequence[Path]) -> str:
    return " / ".join(t for t in (tail(log) for log in logs) if t) or "no output"
